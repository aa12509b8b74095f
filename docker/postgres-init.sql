-- Run once by the postgres image, on the first start of an empty data volume (docker/compose.yaml
-- mounts it into /docker-entrypoint-initdb.d/). POSTGRES_DB already created "prefect"; MLflow
-- gets its own database in the same instance, owned by the same role (POSTGRES_USER), so the two
-- stores never share tables and a backup is one pg_dumpall.
CREATE DATABASE mlflow;
