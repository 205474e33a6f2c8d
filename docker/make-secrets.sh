#!/bin/sh
# The Compose stack's secrets (docker/compose.yaml, top-level `secrets:`), one file each in
# docker/secrets/ (gitignored; or the folder given): random passwords and tokens, and the
# prediction API's keys. Run once from anywhere; a file that exists is kept, so a second run
# changes nothing (delete a file, run again and restart the stack to rotate that secret).
#
# The API's keys, as `ray-app cluster up` makes them locally: `local` (role admin) is yours,
# in local_api_key, which no container mounts; `pipeline` (role operator) is the key the
# stack's own requests send (api_client_key). The stack holds their SHA-256 hashes only
# (api_key_hashes, see ray_app/core/api_keys.py).
#
# The folder is its owner's alone (0700); the files in it are 0644, as Compose bind-mounts
# them with their host owner and mode into containers whose users differ (ray, postgres,
# grafana), and only a readable file can be read there.
set -eu
dir=${1:-$(dirname "$0")/secrets}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

password() { openssl rand -hex 32; }
api_key() { openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n'; }  # 32 random bytes
sha256() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
keep() {  # keep NAME MAKER: the file NAME, made by MAKER unless it holds a value already
  [ -s "$dir/$1" ] || "$2" > "$dir/$1"
}

for name in ray_auth_token postgres_password mlflow_admin_password mlflow_flask_secret_key \
  mlflow_password redis_password grafana_admin_password; do
  keep "$name" password
done
keep local_api_key api_key
keep api_client_key api_key
printf '{"local": {"hash": "%s", "role": "admin"}, "pipeline": {"hash": "%s", "role": "operator"}}\n' \
  "$(sha256 "$(cat "$dir/local_api_key")")" "$(sha256 "$(cat "$dir/api_client_key")")" \
  > "$dir/api_key_hashes"
chmod 644 "$dir"/*
chmod 600 "$dir/local_api_key"
echo "secrets in $dir; your API key (role admin): $dir/local_api_key"
