-- Runs once, on an empty data volume, as POSTGRES_USER. Airflow, MLflow and MLflow's basic-auth
-- app each get their own database so their schema migrations can never collide.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
