################################################################################
# KubeRay operator
################################################################################

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_operator_version
  namespace        = var.kuberay_operator_namespace
  create_namespace = true

  # The chart installs the RayCluster, RayJob, RayService and RayCronJob CRDs. Its values
  # turn on the RayCronJob feature gate (alpha, off by default in v1.7.0): without it the API
  # server accepts cluster/ray-cronjob.pipeline.yaml but nothing ever runs the daily pipeline.
  values = [file("${path.module}/kuberay-values.yaml")]

  wait    = true
  timeout = 600
}

resource "helm_release" "nvidia_device_plugin" {
  count = var.enable_nvidia_device_plugin ? 1 : 0

  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_version
  namespace        = "nvidia-device-plugin"
  create_namespace = true

  # Run on the tainted GPU nodes only.
  values = [yamlencode({
    nodeSelector = { "ray-app/node-kind" = "gpu" }
    tolerations = [{
      key      = "nvidia.com/gpu"
      operator = "Exists"
      effect   = "NoSchedule"
    }]
  })]
}

################################################################################
# The ray-app namespace: what cluster/ray-cluster.yaml expects besides the
# token Secret (ray-app-auth-token), which is created by hand so that it never
# lands in Terraform state.
################################################################################

resource "kubernetes_namespace_v1" "this" {
  metadata {
    name = var.namespace
    labels = {
      "app.kubernetes.io/part-of" = "ray-app"
    }
  }
}

resource "kubernetes_service_account_v1" "ray" {
  metadata {
    name      = var.service_account_name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
}

resource "kubernetes_config_map_v1" "config" {
  metadata {
    name      = "ray-app-config"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }

  data = var.config
}

# gcsFaultToleranceOptions.redisPassword reads key "password".
resource "kubernetes_secret_v1" "redis" {
  count = var.enable_redis ? 1 : 0

  metadata {
    name      = "ray-app-redis"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }

  data = {
    password = var.redis_password
  }
}

# RAY_APP_ONLINE__REDIS_URL for the online feature store (database 1; the GCS uses 0) and
# RAY_APP_API__RATE_LIMIT_REDIS_URL for the prediction API's per-key counters (database 2),
# without a password: with RAY_APP_ENVIRONMENT=prod a password inside a setting's URL is
# refused. ray-app reads the password as its secret redis_password, from the Secret
# ray-app-secrets that every Ray pod mounts (file backend), which the External Secrets
# Operator fills from Vault (cluster/external-secrets/); an env-backend variable here would be
# ignored there.
resource "kubernetes_secret_v1" "env" {
  count = var.enable_redis ? 1 : 0

  metadata {
    name      = "ray-app-env"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }

  data = {
    RAY_APP_ONLINE__REDIS_URL         = "rediss://${var.redis_host}:${var.redis_port}/1"
    RAY_APP_API__RATE_LIMIT_REDIS_URL = "rediss://${var.redis_host}:${var.redis_port}/2"
  }
}

# A stable in-namespace name (ray-app-redis) for the ElastiCache primary endpoint.
resource "kubernetes_service_v1" "redis" {
  count = var.enable_redis ? 1 : 0

  metadata {
    name      = "ray-app-redis"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }

  spec {
    type          = "ExternalName"
    external_name = var.redis_host
  }
}

# The MLflow tracking server's backend store (RDS), for its Deployment to read:
#   mlflow server --backend-store-uri "$(MLFLOW_BACKEND_STORE_URI)" ...
resource "kubernetes_secret_v1" "mlflow_db" {
  count = var.enable_mlflow_db ? 1 : 0

  metadata {
    name      = "ray-app-mlflow-db"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }

  data = {
    MLFLOW_BACKEND_STORE_URI = var.mlflow_backend_store_uri
  }
}
