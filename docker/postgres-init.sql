-- Runs once, on an empty data volume, as POSTGRES_USER. Airflow and MLflow each get their own
-- database so their schema migrations can never collide.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
