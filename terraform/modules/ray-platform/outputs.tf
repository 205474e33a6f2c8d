output "namespace" {
  description = "Namespace of the Ray cluster"
  value       = kubernetes_namespace_v1.this.metadata[0].name
}

output "service_account_name" {
  description = "Service account of the Ray pods"
  value       = kubernetes_service_account_v1.ray.metadata[0].name
}

output "config_map_name" {
  description = "ConfigMap holding the Ray containers' environment"
  value       = kubernetes_config_map_v1.config.metadata[0].name
}

output "kuberay_operator_version" {
  description = "Installed kuberay-operator chart version"
  value       = helm_release.kuberay_operator.version
}
