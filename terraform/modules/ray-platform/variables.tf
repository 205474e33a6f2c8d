variable "namespace" {
  description = "Namespace of the Ray cluster and the objects cluster/ray-cluster.yaml expects"
  type        = string
  default     = "ray-app"
}

variable "service_account_name" {
  description = "Service account of the Ray pods (bound to an IAM role by EKS Pod Identity outside this module)"
  type        = string
  default     = "ray-app"
}

variable "kuberay_operator_version" {
  description = "Version of the kuberay-operator Helm chart"
  type        = string
  default     = "1.7.0"
}

variable "kuberay_operator_namespace" {
  description = "Namespace the KubeRay operator is installed in"
  type        = string
  default     = "kuberay-system"
}

variable "config" {
  description = "Environment of every Ray container (RAY_APP_* settings and the like), stored in the ray-app-config ConfigMap"
  type        = map(string)
}

variable "enable_redis" {
  description = "Create the ray-app-redis Service and the Secrets that point Ray and the online store at Redis"
  type        = bool
  default     = false
}

variable "redis_host" {
  description = "Host name of the Redis primary (the ExternalName of the ray-app-redis Service)"
  type        = string
  default     = ""
}

variable "redis_port" {
  description = "TCP port of the Redis"
  type        = number
  default     = 6379
}

variable "redis_password" {
  description = "Redis AUTH token (password)"
  type        = string
  default     = ""
  sensitive   = true
}

variable "enable_mlflow_db" {
  description = "Create the ray-app-mlflow-db Secret holding the MLflow server's backend store URI"
  type        = bool
  default     = false
}

variable "mlflow_backend_store_uri" {
  description = "MLflow backend store URI (postgresql://...) for the ray-app-mlflow-db Secret"
  type        = string
  default     = ""
  sensitive   = true
}

variable "enable_nvidia_device_plugin" {
  description = "Install the NVIDIA device plugin so GPU nodes advertise nvidia.com/gpu"
  type        = bool
  default     = false
}

variable "nvidia_device_plugin_version" {
  description = "Version of the nvidia-device-plugin Helm chart"
  type        = string
  default     = "0.17.1"
}
