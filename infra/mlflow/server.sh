#!/bin/sh
# The MLflow tracking server for changeseg, with MLflow's basic-auth app: runs and the model
# registry in PostgreSQL, users and permissions in a second database, artifacts
# (checkpoints, pyfunc models, overlays) in object storage. Clients upload and download
# artifacts through the server (--serve-artifacts), so only the server holds
# object-storage credentials.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@db:5432/mlflow \
#   MLFLOW_AUTH_DATABASE_URI=postgresql://mlflow:PASSWORD@db:5432/mlflow_auth \
#   MLFLOW_AUTH_ADMIN_PASSWORD=... MLFLOW_FLASK_SERVER_SECRET_KEY=... \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://changeseg/mlflow-artifacts \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [MLFLOW_S3_ENDPOINT_URL=http://minio:9000] \
#   infra/mlflow/server.sh
#
# Every request but /health needs a user (MLFLOW_TRACKING_USERNAME / _PASSWORD on the
# client); the admin (MLFLOW_AUTH_ADMIN_USERNAME, default admin) is created on the first
# start, and infra/mlflow/users.py creates the job and serving users. Authenticated users
# read everything (default_permission READ); a registered model or experiment can be
# changed by its creator and the admin only.
#
# MLFLOW_HOST defaults to 127.0.0.1; in a container set 0.0.0.0 and publish the port on a
# private address only (see docker-compose.yaml). MLflow accepts Host headers of loopback
# and private addresses; MLFLOW_SERVER_ALLOWED_HOSTS replaces that list (patterns, e.g.
# mlflow.changeseg.svc.cluster.local:*) when clients use a DNS name.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://user:password@host:5432/db}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI=postgresql://user:password@host:5432/auth_db}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (from a secret)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (from a secret; the same on every replica)}"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"

# The auth app reads its settings from a file; the database URI holds a password, so the
# file is written at start, readable by this user only, and never part of the image.
umask 077
export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-$(mktemp -d)/basic_auth.ini}"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = $MLFLOW_AUTH_DATABASE_URI
admin_username = $MLFLOW_AUTH_ADMIN_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

exec mlflow server \
  --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
