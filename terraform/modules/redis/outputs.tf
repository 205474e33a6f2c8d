output "replication_group_id" {
  description = "ID of the ElastiCache replication group"
  value       = aws_elasticache_replication_group.this.id
}

output "primary_endpoint_address" {
  description = "Host name of the primary node (follows failover)"
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "port" {
  description = "TCP port of the Redis"
  value       = var.port
}

output "url" {
  description = "TLS address of the primary in the form Ray's redisAddress takes (rediss://host:port)"
  value       = "rediss://${aws_elasticache_replication_group.this.primary_endpoint_address}:${var.port}"
}

output "auth_token" {
  description = "The Redis AUTH token (password)"
  value       = random_password.auth_token.result
  sensitive   = true
}

output "security_group_id" {
  description = "ID of the security group attached to the Redis nodes"
  value       = aws_security_group.this.id
}
