"""Every environment variable the platform reads, in one place, and the data directory default.

Modules import their variable names from here, so :data:`ENVIRONMENT_VARIABLES` is the whole
list (the tests clear exactly these around every test, and a unit test fails when a module
reads a ``GEO_BUSYNESS_*`` name that is not declared here). What each means and its default is
documented where it is used (``resources/environment.py`` for the resources' variables).
"""

from __future__ import annotations

import os
from pathlib import Path

# Where state lives.
DATA_DIR_ENV = "GEO_BUSYNESS_DATA_DIR"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
# Which environment and its resources (resources/environment.py).
ENVIRONMENT_ENV = "GEO_BUSYNESS_ENV"
BUCKET_ENV = "GEO_BUSYNESS_BUCKET"
LANDING_ZONE_ENV = "GEO_BUSYNESS_LANDING_ZONE"
STORAGE_ENV = "GEO_BUSYNESS_STORAGE"
S3_ENDPOINT_ENV = "GEO_BUSYNESS_S3_ENDPOINT_URL"
MLFLOW_TRACKING_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_UI_ENV = "GEO_BUSYNESS_MLFLOW_UI_URL"
REPORTS_ENV = "GEO_BUSYNESS_REPORTS"
REPORTS_URL_ENV = "GEO_BUSYNESS_REPORTS_URL"
ENDPOINT_TARGET_ENV = "GEO_BUSYNESS_ENDPOINT_TARGET"
ENDPOINT_PORT_ENV = "GEO_BUSYNESS_ENDPOINT_PORT"
TRAINING_BACKEND_ENV = "GEO_BUSYNESS_TRAINING_BACKEND"
TRAINING_INSTANCE_ENV = "GEO_BUSYNESS_SAGEMAKER_TRAINING_INSTANCE_TYPE"
SAGEMAKER_ENV = {
    "endpoint_name": "GEO_BUSYNESS_SAGEMAKER_ENDPOINT",
    "role_arn": "GEO_BUSYNESS_SAGEMAKER_ROLE_ARN",
    "image_uri": "GEO_BUSYNESS_SAGEMAKER_IMAGE_URI",
    "model_bucket": "GEO_BUSYNESS_SAGEMAKER_BUCKET",
}
# Which cities are served (core/catalog.py): a cities.yaml path.
CITIES_ENV = "GEO_BUSYNESS_CITIES"
# The Dagster definitions.
START_DATE_ENV = "GEO_BUSYNESS_START_DATE"
END_DATE_ENV = "GEO_BUSYNESS_END_DATE"
EXECUTOR_ENV = "GEO_BUSYNESS_EXECUTOR"
SENSOR_INTERVAL_ENV = "GEO_BUSYNESS_SENSOR_INTERVAL_SECONDS"
CODE_LOCATION_ENV = "GEO_BUSYNESS_CODE_LOCATION"
# The model server inside its container (serving/, deploy/sagemaker.py).
SERVING_MODEL_DIR_ENV = "GEO_BUSYNESS_SERVING_MODEL_DIR"
SERVING_MAX_BODY_ENV = "GEO_BUSYNESS_SERVING_MAX_BODY_BYTES"
SERVING_MAX_INSTANCES_ENV = "GEO_BUSYNESS_SERVING_MAX_INSTANCES"
MODEL_VERSION_ENV = "GEO_BUSYNESS_MODEL_VERSION"
MODEL_NAME_ENV = "GEO_BUSYNESS_MODEL_NAME"
MODEL_MEMBERS_ENV = "GEO_BUSYNESS_MODEL_MEMBERS"  # a multi-city bundle's members (JSON)

ENVIRONMENT_VARIABLES: tuple[str, ...] = (
    DATA_DIR_ENV,
    DAGSTER_HOME_ENV,
    ENVIRONMENT_ENV,
    BUCKET_ENV,
    LANDING_ZONE_ENV,
    STORAGE_ENV,
    S3_ENDPOINT_ENV,
    MLFLOW_TRACKING_ENV,
    MLFLOW_UI_ENV,
    REPORTS_ENV,
    REPORTS_URL_ENV,
    ENDPOINT_TARGET_ENV,
    ENDPOINT_PORT_ENV,
    TRAINING_BACKEND_ENV,
    TRAINING_INSTANCE_ENV,
    *SAGEMAKER_ENV.values(),
    CITIES_ENV,
    START_DATE_ENV,
    END_DATE_ENV,
    EXECUTOR_ENV,
    SENSOR_INTERVAL_ENV,
    CODE_LOCATION_ENV,
    SERVING_MODEL_DIR_ENV,
    SERVING_MAX_BODY_ENV,
    SERVING_MAX_INSTANCES_ENV,
    MODEL_VERSION_ENV,
    MODEL_NAME_ENV,
    MODEL_MEMBERS_ENV,
)

DEFAULT_SENSOR_INTERVAL_SECONDS = 30
DEFAULT_CODE_LOCATION = "geo_busyness"
"""What workspace.yaml, dagster_cloud.yaml and pyproject.toml name the code location (the
Helm chart names it after its deployment, ``geo-busyness``: set GEO_BUSYNESS_CODE_LOCATION)."""


DEFINITIONS_MODULE = "geo_busyness.definitions"
"""The module the code location loads (workspace.yaml, pyproject.toml, ``dagster dev -m``)."""


def code_location_name() -> str:
    return os.environ.get(CODE_LOCATION_ENV) or DEFAULT_CODE_LOCATION


def sensor_interval_seconds() -> int:
    """Minimum seconds between two ticks of each of our sensors (30 by default; the end-to-end
    tests set a few seconds so the daemon reacts in seconds, not half-minutes)."""
    value = os.environ.get(SENSOR_INTERVAL_ENV, "")
    if not value:
        return DEFAULT_SENSOR_INTERVAL_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(
            f"{SENSOR_INTERVAL_ENV} must be a whole number of seconds >= 1, got {value!r}"
        )
    return seconds


def default_data_dir() -> Path:
    """``$GEO_BUSYNESS_DATA_DIR``, else ``data/`` in a source checkout, else ``~/.geo_busyness``.

    Never the current working directory by accident: running a command from another
    directory must not scatter data there.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "geo_busyness").is_dir():
        return checkout / "data"
    return Path.home() / ".geo_busyness"
