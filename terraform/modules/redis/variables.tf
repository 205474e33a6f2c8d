variable "name" {
  description = "Name of the replication group and prefix of its subnet and security groups"
  type        = string
}

variable "vpc_id" {
  description = "ID of the VPC the Redis runs in"
  type        = string
}

variable "subnet_ids" {
  description = "Private subnet IDs (one per AZ) for the cache subnet group"
  type        = list(string)
}

variable "allowed_security_group_ids" {
  description = "Security groups allowed to connect on the Redis port (the EKS node security group)"
  type        = list(string)
}

variable "engine_version" {
  description = "Redis OSS engine version"
  type        = string
  default     = "7.1"
}

variable "parameter_group_name" {
  description = "Parameter group of the engine version; Ray needs cluster mode disabled"
  type        = string
  default     = "default.redis7"
}

variable "node_type" {
  description = "ElastiCache node type"
  type        = string
  default     = "cache.t4g.medium"
}

variable "num_cache_clusters" {
  description = "Nodes in the group: 1 primary plus replicas; 2 or more enables automatic Multi-AZ failover"
  type        = number
  default     = 2

  validation {
    condition     = var.num_cache_clusters >= 1 && var.num_cache_clusters <= 6
    error_message = "num_cache_clusters must be between 1 and 6."
  }
}

variable "port" {
  description = "TCP port Redis listens on"
  type        = number
  default     = 6379
}

variable "snapshot_retention_limit" {
  description = "Days of automatic snapshots kept; 0 disables them"
  type        = number
  default     = 3
}

variable "tags" {
  description = "Tags added to every resource of the module"
  type        = map(string)
  default     = {}
}
