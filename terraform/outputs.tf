output "vpc_id" {
  description = "ID of the VPC"
  value       = module.vpc.vpc_id
}

output "cluster_name" {
  description = "Name of the EKS cluster"
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Endpoint of the EKS API server"
  value       = module.eks.cluster_endpoint
}

output "configure_kubectl" {
  description = "Command that writes a kubeconfig entry for the cluster"
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "data_bucket" {
  description = "Name of the S3 bucket of the data root and MLflow artifacts"
  value       = aws_s3_bucket.data.bucket
}

output "data_root_uri" {
  description = "The platform's data root (RAY_APP_DATA_ROOT in the ray-app-config ConfigMap)"
  value       = local.data_root_uri
}

output "mlflow_artifact_root" {
  description = "S3 prefix to give the MLflow tracking server as its default artifact root"
  value       = local.mlflow_artifact_root
}

output "ray_pods_role_arn" {
  description = "IAM role the Ray pods assume through EKS Pod Identity"
  value       = aws_iam_role.ray_pods.arn
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the ElastiCache Redis; null when enable_redis is false"
  value       = var.enable_redis ? module.redis[0].primary_endpoint_address : null
}

output "gcs_redis_address" {
  description = "Address for gcsFaultToleranceOptions.redisAddress when not using the in-namespace ray-app-redis Service"
  value       = var.enable_redis ? module.redis[0].url : null
}

output "redis_auth_token" {
  description = "Redis AUTH token, for the secret redis_password in Vault (secret/ray-app); null when enable_redis is false"
  value       = var.enable_redis ? module.redis[0].auth_token : null
  sensitive   = true
}

output "namespace" {
  description = "Kubernetes namespace to apply cluster/ray-cluster.yaml in"
  value       = module.ray_platform.namespace
}

output "mlflow_db_address" {
  description = "Host name of the MLflow RDS PostgreSQL; null when enable_mlflow_db is false"
  value       = var.enable_mlflow_db ? module.mlflow_db[0].address : null
}

output "mlflow_backend_store_uri" {
  description = "mlflow server --backend-store-uri (postgresql://..., sslmode=require); also in the ray-app-mlflow-db Secret"
  value       = var.enable_mlflow_db ? module.mlflow_db[0].backend_store_uri : null
  sensitive   = true
}
