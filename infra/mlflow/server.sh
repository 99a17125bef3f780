#!/bin/sh
# The MLflow tracking server for changeseg: runs and the model registry in PostgreSQL,
# artifacts (checkpoints, pyfunc models, overlays) in object storage. Clients upload and
# download artifacts through the server (--serve-artifacts), so only the server holds
# object-storage credentials.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@db:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://changeseg/mlflow-artifacts \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [MLFLOW_S3_ENDPOINT_URL=http://minio:9000] \
#   infra/mlflow/server.sh
#
# MLFLOW_HOST defaults to 127.0.0.1; in a container set 0.0.0.0 and publish the port on a
# private address only (see docker-compose.yaml). MLflow accepts Host headers of loopback
# and private addresses; MLFLOW_SERVER_ALLOWED_HOSTS replaces that list (patterns, e.g.
# mlflow.changeseg.svc.cluster.local:*) when clients use a DNS name.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://user:password@host:5432/db}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix}"

exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
