# One image: the Dagster code location (default command); run as `serve`, the model server
# with SageMaker's hosting contract (GET /ping, POST /invocations on 8080, model in /opt/ml/model);
# run as `train`, a SageMaker training job (training set in /opt/ml/input/data/training, model
# written to /opt/ml/model, reason of a failure to /opt/ml/output/failure).
# Every command below is also run by geo_busyness_tests/integration/test_packaging.py outside a container.
#
# The base is pinned by digest: a rebuild starts from the same bytes until the digest is moved on
# purpose (the tag stays for the reader; Docker pulls by the digest). This one is the
# multi-platform index of python:3.11-slim when it was 3.11.17-slim-trixie (Debian 13; amd64
# image created 2026-10-01), as published pinned in public Dockerfiles; it was not resolved
# against Docker Hub from here. To refresh it (then rebuild and run the tests):
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# (or `docker pull python:3.11-slim` and read "Digest:"; or the first digest in
# https://github.com/docker-library/repo-info/blob/master/repos/python/remote/3.11-slim.md).
FROM python:3.11-slim@sha256:45037981b62b34b44602584fccbc4d884d5f7dc92c7ee86bb38a698a79fe1e51

ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PYTHONUNBUFFERED=1 \
    GEO_BUSYNESS_DATA_DIR=/data \
    DAGSTER_HOME=/data/dagster_home

# uv at the version of uv.lock (the dev group's), the one the tests build with.
RUN pip install --no-cache-dir uv==0.13.9 && useradd --create-home --uid 1000 app && mkdir -p /data/dagster_home && chown -R app /data
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
# Health of `serve` (docker run / compose / ECS; SageMaker sends its own GET /ping and ignores
# this): GET /ping on the server's port (--port, else $SAGEMAKER_BIND_TO_PORT, else 8080) must
# answer 200 within 3 s. The container's command is read from /proc/$HEALTHCHECK_PID/cmdline
# (default 1: the command itself); any other command (the code server, dagster dev, train) has
# no HTTP endpoint here and is reported healthy. Python, not curl: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, sys, urllib.request; \
argv = open('/proc/%s/cmdline' % os.environ.get('HEALTHCHECK_PID', '1'), 'rb').read().decode().split('\0'); \
serving = any(os.path.basename(arg) == 'serve' for arg in argv); \
port = argv[argv.index('--port') + 1] if '--port' in argv else os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080'); \
sys.exit(0 if not serving or urllib.request.urlopen('http://127.0.0.1:%s/ping' % port, timeout=3).status == 200 else 1)"
# Code server for a Dagster deployment; `dagster dev -h 0.0.0.0`, `geo-busyness demo`,
# `serve` (SageMaker inference) and `train` (SageMaker training) also work.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "geo_busyness.definitions"]
