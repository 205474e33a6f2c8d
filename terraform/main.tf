################################################################################
# ray-app on AWS: a VPC, an EKS cluster with a CPU (and optional GPU) managed node
# group, an S3 bucket for the data root and MLflow artifacts, an optional
# ElastiCache Redis for Ray GCS fault tolerance and online features, and the
# KubeRay operator with what cluster/ray-cluster.yaml expects in its namespace.
# Layout after terraform-aws-modules/eks's examples.
################################################################################

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

provider "kubernetes" {
  host                   = module.eks.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
  }
}

provider "helm" {
  kubernetes = {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
  }
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first three zones are used (local.azs slices them), so a zone AWS adds later never changes the subnets.
  # Exclude local zones
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

data "aws_caller_identity" "current" {}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, 3)

  data_bucket_name = coalesce(
    var.data_bucket_name,
    "${var.name}-${data.aws_caller_identity.current.account_id}-${var.region}",
  )
  data_root_uri        = "s3://${aws_s3_bucket.data.bucket}/lake"
  mlflow_artifact_root = "s3://${aws_s3_bucket.data.bucket}/mlflow"

  # The Kubernetes service account of every Ray pod (serviceAccountName in cluster/ray-cluster.yaml).
  ray_service_account = "ray-app"

  root_volume = {
    xvda = {
      device_name = "/dev/xvda"
      ebs = {
        volume_size           = 100
        volume_type           = "gp3"
        encrypted             = true
        delete_on_termination = true
      }
    }
  }

  gpu_node_groups = {
    for k, v in {
      gpu = {
        ami_type       = "AL2023_x86_64_NVIDIA"
        instance_types = var.gpu_node_instance_types
        min_size       = 0
        max_size       = var.gpu_node_max_size
        desired_size   = 0

        labels = { "ray-app/node-kind" = "gpu" }
        # Only pods that tolerate it (the Ray gpu worker group) land here.
        taints = {
          gpu = {
            key    = "nvidia.com/gpu"
            value  = "true"
            effect = "NO_SCHEDULE"
          }
        }
        block_device_mappings = local.root_volume
      }
    } : k => v if var.enable_gpu_node_group
  }

  tags = merge(var.tags, {
    Project   = var.name
    ManagedBy = "terraform"
  })
}

################################################################################
# VPC
################################################################################

module "vpc" {
  #checkov:skip=CKV_TF_1:A registry module pinned by version constraint; registry releases are immutable tags, and a commit hash is not a registry source.
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 6.0"

  name = var.name
  cidr = var.vpc_cidr

  azs             = local.azs
  private_subnets = [for k, v in local.azs : cidrsubnet(var.vpc_cidr, 4, k)]
  public_subnets  = [for k, v in local.azs : cidrsubnet(var.vpc_cidr, 8, k + 48)]
  intra_subnets   = [for k, v in local.azs : cidrsubnet(var.vpc_cidr, 8, k + 52)]

  enable_nat_gateway = true
  single_nat_gateway = true

  public_subnet_tags = {
    "kubernetes.io/role/elb" = 1
  }

  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = 1
  }

  tags = local.tags
}

################################################################################
# EKS
################################################################################

module "eks" {
  #checkov:skip=CKV_TF_1:A registry module pinned by version constraint; registry releases are immutable tags, and a commit hash is not a registry source.
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 21.0"

  name               = var.name
  kubernetes_version = var.kubernetes_version

  endpoint_public_access                   = var.cluster_endpoint_public_access
  endpoint_public_access_cidrs             = var.cluster_endpoint_public_access_cidrs
  endpoint_private_access                  = true
  enable_cluster_creator_admin_permissions = true

  addons = {
    coredns = {}
    eks-pod-identity-agent = {
      before_compute = true
    }
    kube-proxy = {}
    vpc-cni = {
      before_compute = true
    }
  }

  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.private_subnets
  control_plane_subnet_ids = module.vpc.intra_subnets

  eks_managed_node_groups = merge(
    {
      cpu = {
        ami_type       = "AL2023_x86_64_STANDARD"
        instance_types = var.cpu_node_instance_types
        min_size       = var.cpu_node_min_size
        max_size       = var.cpu_node_max_size
        desired_size   = var.cpu_node_desired_size

        labels                = { "ray-app/node-kind" = "cpu" }
        block_device_mappings = local.root_volume
      }
    },
    local.gpu_node_groups,
  )

  tags = local.tags
}

################################################################################
# S3: the data root (raw bars, features, manifests) and MLflow artifacts
################################################################################

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Object access is audited with CloudTrail S3 data events (README.md), which name the IAM principal; server access logs would need a second bucket.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events: the pipeline runs on a schedule (RayCronJob), not on uploads.
  #checkov:skip=CKV_AWS_144:Versioning keeps 30 days of overwritten objects and the lake is rebuilt from its sources; a second region is a cost choice left to the operator.
  bucket        = local.data_bucket_name
  force_destroy = var.data_bucket_force_destroy
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket = aws_s3_bucket.data.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# TLS only: requests over plain HTTP are refused whoever makes them.
data "aws_iam_policy_document" "data_bucket_tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.data_bucket_tls_only.json

  depends_on = [aws_s3_bucket_public_access_block.data]
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

################################################################################
# The Ray pods' AWS identity (EKS Pod Identity): read and write the data bucket
################################################################################

data "aws_iam_policy_document" "ray_pods_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ray_pods" {
  name               = "${var.name}-ray-pods"
  assume_role_policy = data.aws_iam_policy_document.ray_pods_assume.json
}

data "aws_iam_policy_document" "data_bucket" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.data.arn]
  }

  statement {
    sid = "ReadWriteObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${aws_s3_bucket.data.arn}/*"]
  }
}

resource "aws_iam_role_policy" "ray_pods_data_bucket" {
  name   = "data-bucket"
  role   = aws_iam_role.ray_pods.id
  policy = data.aws_iam_policy_document.data_bucket.json
}

resource "aws_eks_pod_identity_association" "ray_pods" {
  cluster_name    = module.eks.cluster_name
  namespace       = var.namespace
  service_account = local.ray_service_account
  role_arn        = aws_iam_role.ray_pods.arn
}

################################################################################
# Redis (ElastiCache): GCS fault tolerance and the online feature store
################################################################################

module "redis" {
  source = "./modules/redis"
  count  = var.enable_redis ? 1 : 0

  name                       = var.name
  vpc_id                     = module.vpc.vpc_id
  subnet_ids                 = module.vpc.private_subnets
  allowed_security_group_ids = [module.eks.node_security_group_id]
  node_type                  = var.redis_node_type
  num_cache_clusters         = var.redis_num_cache_clusters

  tags = local.tags
}

################################################################################
# RDS PostgreSQL: the MLflow tracking server's backend store
################################################################################

module "mlflow_db" {
  source = "./modules/mlflow-db"
  count  = var.enable_mlflow_db ? 1 : 0

  name                       = "${var.name}-mlflow"
  vpc_id                     = module.vpc.vpc_id
  subnet_ids                 = module.vpc.private_subnets
  allowed_security_group_ids = [module.eks.node_security_group_id]
  instance_class             = var.mlflow_db_instance_class
  multi_az                   = var.mlflow_db_multi_az
  deletion_protection        = var.mlflow_db_deletion_protection

  tags = local.tags
}

################################################################################
# Kubernetes: KubeRay operator and the ray-app namespace's configuration
################################################################################

module "ray_platform" {
  source = "./modules/ray-platform"

  namespace                = var.namespace
  service_account_name     = local.ray_service_account
  kuberay_operator_version = var.kuberay_operator_version

  config = merge(
    {
      # RAY_APP_ENVIRONMENT=prod: placeholder secrets and passwords in settings' URLs are refused.
      RAY_APP_DATA_ROOT       = local.data_root_uri
      RAY_APP_ONLINE__BACKEND = var.enable_redis ? "redis" : "offline"
      RAY_APP_ENVIRONMENT     = "prod"
      AWS_DEFAULT_REGION      = var.region
    },
    var.mlflow_tracking_uri == "" ? {} : { RAY_APP_MLFLOW__TRACKING_URI = var.mlflow_tracking_uri },
  )

  enable_redis   = var.enable_redis
  redis_host     = var.enable_redis ? module.redis[0].primary_endpoint_address : ""
  redis_port     = var.enable_redis ? module.redis[0].port : 6379
  redis_password = var.enable_redis ? module.redis[0].auth_token : ""

  enable_mlflow_db         = var.enable_mlflow_db
  mlflow_backend_store_uri = var.enable_mlflow_db ? module.mlflow_db[0].backend_store_uri : ""

  enable_nvidia_device_plugin = var.enable_gpu_node_group

  depends_on = [module.eks]
}
