variable "name" {
  description = "Name of the deployment: prefixes the VPC, the EKS cluster, the Redis group and the bucket"
  type        = string
  default     = "ray-app"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy into"
  type        = string
  default     = "us-east-1"
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the EKS control plane (tests/infra validates manifests against it)"
  type        = string
  default     = "1.35"
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC; private, public and intra subnets are carved from it across three AZs"
  type        = string
  default     = "10.0.0.0/16"
}

variable "cluster_endpoint_public_access" {
  description = "Whether the EKS API endpoint is reachable from the internet (kubectl, helm, this Terraform)"
  type        = bool
  default     = true
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the public EKS API endpoint (your office, VPN or CI egress); required, never 0.0.0.0/0; [] when cluster_endpoint_public_access is false"
  type        = list(string)

  validation {
    # Referring to another variable here needs Terraform >= 1.9 (versions.tf asks 1.10).
    condition     = (length(var.cluster_endpoint_public_access_cidrs) > 0 || !var.cluster_endpoint_public_access) && alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "cluster_endpoint_public_access_cidrs must hold CIDR blocks, such as 203.0.113.0/24, at least one while the endpoint is public."
  }

  validation {
    condition     = !anytrue([for c in var.cluster_endpoint_public_access_cidrs : endswith(c, "/0")])
    error_message = "cluster_endpoint_public_access_cidrs may not open the API to every address (/0); name the networks that need it."
  }
}

variable "cpu_node_instance_types" {
  description = "Instance types of the CPU managed node group (Ray head and CPU workers)"
  type        = list(string)
  default     = ["m6i.2xlarge"]
}

variable "cpu_node_min_size" {
  description = "Minimum number of CPU nodes"
  type        = number
  default     = 2
}

variable "cpu_node_max_size" {
  description = "Maximum number of CPU nodes (a node autoscaler such as Karpenter or cluster-autoscaler scales within it)"
  type        = number
  default     = 6
}

variable "cpu_node_desired_size" {
  description = "Initial number of CPU nodes; ignored by EKS after creation"
  type        = number
  default     = 2
}

variable "enable_gpu_node_group" {
  description = "Create a tainted GPU managed node group (scales from zero) and the NVIDIA device plugin"
  type        = bool
  default     = false
}

variable "gpu_node_instance_types" {
  description = "Instance types of the GPU managed node group"
  type        = list(string)
  default     = ["g6.xlarge"]
}

variable "gpu_node_max_size" {
  description = "Maximum number of GPU nodes"
  type        = number
  default     = 2
}

variable "data_bucket_name" {
  description = "Name of the S3 bucket holding the data root and MLflow artifacts; null derives one from name, account and region"
  type        = string
  default     = null
}

variable "data_bucket_force_destroy" {
  description = "Allow terraform destroy to delete the bucket with its objects (never in production)"
  type        = bool
  default     = false
}

variable "enable_redis" {
  description = "Create an ElastiCache Redis for Ray GCS fault tolerance and the online feature store"
  type        = bool
  default     = true
}

variable "redis_node_type" {
  description = "ElastiCache node type of the Redis replication group"
  type        = string
  default     = "cache.t4g.medium"
}

variable "redis_num_cache_clusters" {
  description = "Nodes in the Redis replication group: 1 primary plus replicas; 2 or more enables Multi-AZ failover"
  type        = number
  default     = 2
}

variable "enable_mlflow_db" {
  description = "Create an RDS PostgreSQL for the MLflow tracking server's backend store (and the ray-app-mlflow-db Secret)"
  type        = bool
  default     = true
}

variable "mlflow_db_instance_class" {
  description = "RDS instance class of the MLflow database"
  type        = string
  default     = "db.t4g.medium"
}

variable "mlflow_db_multi_az" {
  description = "A standby of the MLflow database in another AZ with automatic failover"
  type        = bool
  default     = true
}

variable "mlflow_db_deletion_protection" {
  description = "Refuse to delete the MLflow database (set false and apply before terraform destroy)"
  type        = bool
  default     = true
}

variable "kuberay_operator_version" {
  description = "Version of the kuberay-operator Helm chart (equal to the KubeRay release whose CRDs tests/infra validates against)"
  type        = string
  default     = "1.7.0"
}

variable "namespace" {
  description = "Kubernetes namespace of the Ray cluster and its configuration (cluster/ray-cluster.yaml uses ray-app)"
  type        = string
  default     = "ray-app"
}

variable "mlflow_tracking_uri" {
  description = "MLflow tracking server URI given to Ray pods as RAY_APP_MLFLOW__TRACKING_URI; empty leaves it unset"
  type        = string
  default     = ""
}

variable "tags" {
  description = "Tags added to every AWS resource"
  type        = map(string)
  default     = {}
}
