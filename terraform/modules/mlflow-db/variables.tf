variable "name" {
  description = "Identifier of the DB instance and prefix of its subnet, parameter and security groups"
  type        = string
}

variable "vpc_id" {
  description = "ID of the VPC the database runs in"
  type        = string
}

variable "subnet_ids" {
  description = "Private subnet IDs (at least two AZs) for the DB subnet group"
  type        = list(string)
}

variable "allowed_security_group_ids" {
  description = "Security groups allowed to connect on 5432 (the EKS node security group, where the MLflow server runs)"
  type        = list(string)
}

variable "engine_version" {
  description = "PostgreSQL major (or major.minor) version; its major picks the parameter group family"
  type        = string
  default     = "17"
}

variable "instance_class" {
  description = "RDS instance class"
  type        = string
  default     = "db.t4g.medium"
}

variable "allocated_storage" {
  description = "Initial storage in GiB"
  type        = number
  default     = 20
}

variable "max_allocated_storage" {
  description = "Storage autoscaling ceiling in GiB"
  type        = number
  default     = 100
}

variable "database_name" {
  description = "Database created for MLflow"
  type        = string
  default     = "mlflow"
}

variable "username" {
  description = "Master user name (MLflow connects as this user)"
  type        = string
  default     = "mlflow"
}

variable "multi_az" {
  description = "A synchronous standby in another AZ with automatic failover"
  type        = bool
  default     = true
}

variable "backup_retention_period" {
  description = "Days of automated backups (point-in-time recovery); 1-35"
  type        = number
  default     = 7

  validation {
    condition     = var.backup_retention_period >= 1 && var.backup_retention_period <= 35
    error_message = "backup_retention_period must be between 1 and 35 days."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the instance (set false, apply, then destroy)"
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource of the module"
  type        = map(string)
  default     = {}
}
