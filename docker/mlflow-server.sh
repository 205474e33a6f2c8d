#!/bin/bash
# The Compose stack's MLflow tracking server (docker/compose.yaml mounts this file): MLflow's
# basic-auth app, as the chart runs it (charts/ray-app/templates/mlflow.yaml), its runs and
# its users in the stack's PostgreSQL, every secret read from a Compose secret file. Nothing
# secret is in the command line or the compose file; the store URI travels in MLflow's own
# environment variable.
set -euo pipefail
secrets=/run/secrets
conf=/tmp/mlflow

admin_password=$(<"$secrets/mlflow_admin_password")
# MLflow (3.17) refuses its old default admin password only when it creates the admin; a
# server whose admin exists starts with it all the same. Refused here at every start, as is
# one shorter than MLflow's minimum of 12 characters.
if [[ "$admin_password" == password1234 || ${#admin_password} -lt 12 ]]; then
  echo "refused: secret mlflow_admin_password is MLflow's old default admin password" \
    "(password1234) or shorter than 12 characters" >&2
  exit 1
fi
store="postgresql+psycopg2://mlflow:$(<"$secrets/postgres_password")@postgres:5432/mlflow"

# The basic-auth app reads its users' database from an ini file (ConfigParser: % as %%).
umask 077
mkdir -p "$conf"
cat > "$conf/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${store//%/%%}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

MLFLOW_FLASK_SERVER_SECRET_KEY=$(<"$secrets/mlflow_flask_secret_key")
export MLFLOW_AUTH_CONFIG_PATH="$conf/basic_auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$admin_password"
export MLFLOW_BACKEND_STORE_URI="$store" MLFLOW_FLASK_SERVER_SECRET_KEY
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 --workers 1 \
  --artifacts-destination /home/ray/app/data/mlflow-artifacts --serve-artifacts \
  --allowed-hosts "mlflow:5000,localhost:*,127.0.0.1:*"
