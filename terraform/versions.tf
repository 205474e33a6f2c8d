terraform {
  # 1.10: the S3 backend locks state with a lock file in the bucket (use_lockfile).
  required_version = ">= 1.10"

  # State in S3, locked while a plan or apply runs. Bucket and region are given at init:
  #   terraform init -backend-config="bucket=<state bucket>" -backend-config="region=<region>"
  # (README.md: "State"). The state holds the Redis AUTH token and the MLflow database password.
  backend "s3" {
    key          = "ray-app/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.13"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.38"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }
}
