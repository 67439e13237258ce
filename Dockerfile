# One image: the Dagster code location (default command); run as `serve`, the model server
# with SageMaker's hosting contract (GET /ping, POST /invocations on 8080, model in /opt/ml/model);
# run as `train`, a SageMaker training job (training set in /opt/ml/input/data/training, model
# written to /opt/ml/model, reason of a failure to /opt/ml/output/failure).
# Every command below is also run by geo_busyness_tests/integration/test_packaging.py outside a container.
FROM python:3.11-slim

ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PYTHONUNBUFFERED=1 \
    GEO_BUSYNESS_DATA_DIR=/data \
    DAGSTER_HOME=/data/dagster_home

RUN pip install --no-cache-dir uv && useradd --create-home --uid 1000 app && mkdir -p /data/dagster_home && chown -R app /data
WORKDIR /app

# Dependency layer: changes only when the lockfile does.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY geo_busyness ./geo_busyness
COPY workspace.yaml dagster_cloud.yaml ./
RUN uv sync --frozen --no-dev

USER app
ENV PATH="/app/.venv/bin:$PATH"
EXPOSE 3000 4000 8080
# Code server for a Dagster deployment; `dagster dev -h 0.0.0.0`, `geo-busyness demo`,
# `serve` (SageMaker inference) and `train` (SageMaker training) also work.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "geo_busyness.definitions"]
