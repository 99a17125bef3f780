-- A database of its own for MLflow's users and permissions (the basic-auth app).
CREATE DATABASE mlflow_auth OWNER mlflow;
