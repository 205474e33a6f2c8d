################################################################################
# ElastiCache Redis (cluster mode disabled, as Ray's GCS requires): encrypted at
# rest and in transit, password (AUTH token) protected, reachable only from the
# given security groups.
################################################################################

resource "random_password" "auth_token" {
  # ElastiCache AUTH tokens: 16-128 printable characters; alphanumeric keeps URLs simple.
  length  = 64
  special = false
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

resource "aws_kms_key" "this" {
  description             = "${var.name}: Redis data at rest"
  deletion_window_in_days = 30
  enable_key_rotation     = true

  # The account administers the key; ElastiCache uses it through grants made on its behalf.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministers"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })

  tags = var.tags
}

resource "aws_elasticache_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids

  tags = var.tags
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-redis-"
  description = "Redis for ${var.name}: Ray GCS fault tolerance and online features"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-redis" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  count = length(var.allowed_security_group_ids)

  security_group_id            = aws_security_group.this.id
  referenced_security_group_id = var.allowed_security_group_ids[count.index]
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
  description                  = "Redis from allowed security group"
}

resource "aws_elasticache_replication_group" "this" {
  #checkov:skip=CKV2_AWS_50:Automatic Multi-AZ failover is on whenever num_cache_clusters >= 2 (the default is 2); a single node has nothing to fail over to.
  replication_group_id = var.name
  description          = "Redis for ${var.name}: Ray GCS fault tolerance and online features"

  engine               = "redis"
  engine_version       = var.engine_version
  parameter_group_name = var.parameter_group_name
  node_type            = var.node_type
  port                 = var.port

  num_cache_clusters         = var.num_cache_clusters
  automatic_failover_enabled = var.num_cache_clusters > 1
  multi_az_enabled           = var.num_cache_clusters > 1

  subnet_group_name  = aws_elasticache_subnet_group.this.name
  security_group_ids = [aws_security_group.this.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.auth_token.result

  snapshot_retention_limit = var.snapshot_retention_limit
  apply_immediately        = false

  tags = var.tags
}
