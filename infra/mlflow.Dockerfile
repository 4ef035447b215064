# MLflow tracking server for a cluster: PostgreSQL backend store, S3 artifact store.
#   docker build -t "$IMAGE_REGISTRY/animatediff-mlflow:3.17.2" - < infra/mlflow.Dockerfile
# It copies nothing, so it is built without a context (`-`); mlflow.Dockerfile.dockerignore
# empties the context of a `docker build -f infra/mlflow.Dockerfile .` as well.
# Same MLflow version as pyproject.toml (tests/test_infra.py checks it).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.44.8
