"""Resources built from environment variables, with defaults that need no setup.

``GEO_BUSYNESS_ENV`` picks one of three environments; the variables below override its defaults.

* ``local`` (default): everything under the data directory: landing zone, asset storage and
  reports as directories, a SQLite MLflow store, the local model endpoint.
* ``stack``: the production shape on one machine (``geo-busyness stack up`` sets it): landing
  zone, assets and reports in ``s3://$GEO_BUSYNESS_BUCKET`` on an S3-compatible server
  (``GEO_BUSYNESS_S3_ENDPOINT_URL``, SeaweedFS), an ``mlflow server`` (``MLFLOW_TRACKING_URI``)
  keeping its artifacts in that bucket, the local model endpoint.
* ``aws``: S3 (``GEO_BUSYNESS_BUCKET``), an MLflow tracking server, a SageMaker endpoint.

| variable | meaning | default |
| --- | --- | --- |
| ``GEO_BUSYNESS_ENV`` | ``local``, ``stack`` or ``aws`` | ``local`` |
| ``GEO_BUSYNESS_BUCKET`` | bucket of the landing zone, assets and reports (``stack``, ``aws``) | ``geo-busyness`` in ``stack``; required in ``aws`` |
| ``GEO_BUSYNESS_DATA_DIR`` | root of every local default below | ``data/`` in a checkout |
| ``GEO_BUSYNESS_LANDING_ZONE`` | landing zone: directory or ``s3://bucket/prefix`` | ``$DATA_DIR/landing`` |
| ``GEO_BUSYNESS_STORAGE`` | asset storage: directory or ``s3://bucket/prefix`` | ``$DATA_DIR/assets`` |
| ``GEO_BUSYNESS_S3_ENDPOINT_URL`` | S3-compatible endpoint (SeaweedFS, MinIO…) | AWS; required in ``stack`` |
| ``MLFLOW_TRACKING_URI`` | MLflow tracking + registry (``http://…`` server, ``sqlite:///…``) | ``$DATA_DIR/mlflow/mlflow.db``; required in ``stack``, ``aws`` |
| ``GEO_BUSYNESS_MLFLOW_UI_URL`` | MLflow UI base URL for links in Dagster metadata | none |
| ``GEO_BUSYNESS_REPORTS`` | drift reports (HTML) and metadata pictures: directory or ``s3://bucket/prefix`` | ``$DATA_DIR/reports`` |
| ``GEO_BUSYNESS_REPORTS_URL`` | HTTP address serving the reports (links, inline pictures) | ``http://127.0.0.1:3001`` (``geo-busyness ui``) for a local store; none for S3 |
| ``GEO_BUSYNESS_ENDPOINT_TARGET`` | where ``endpoint_deployment`` deploys: ``local`` or ``sagemaker`` | ``sagemaker`` in ``aws``, else ``local`` |
| ``GEO_BUSYNESS_ENDPOINT_PORT`` | port of the local model endpoint (127.0.0.1) | 8080 |
| ``GEO_BUSYNESS_SAGEMAKER_*`` | ``ENDPOINT``, ``ROLE_ARN``, ``IMAGE_URI``, ``BUCKET`` of the SageMaker target | required for sagemaker |
| ``GEO_BUSYNESS_TRAINING_BACKEND`` | where ``busyness_model`` trains: ``local`` (in the step) or ``sagemaker`` (a training job of this image) | ``local`` |
| ``GEO_BUSYNESS_SAGEMAKER_TRAINING_INSTANCE_TYPE`` | instance of the SageMaker training job | ``ml.m5.4xlarge`` |

Set variables are passed as ``dg.EnvVar`` so the UI shows the variable, never its value;
S3 credentials come from the AWS default chain (``AWS_ACCESS_KEY_ID``… or a role).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from geo_busyness.resources.deployment import (
    EndpointTarget,
    LocalEndpointTarget,
    SageMakerEndpointTarget,
)
from geo_busyness.resources.io_manager import ParquetIOManagerResource, PickleIOManagerResource
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.resources.promotion import PromotionPolicyResource
from geo_busyness.resources.quality import DataQualityPolicy
from geo_busyness.resources.reports import LOCAL_REPORTS_URL, DriftPolicy, ReportStore
from geo_busyness.resources.settings import (
    BUCKET_ENV,
    ENDPOINT_PORT_ENV,
    ENDPOINT_TARGET_ENV,
    ENVIRONMENT_ENV,
    LANDING_ZONE_ENV,
    MLFLOW_TRACKING_ENV,
    MLFLOW_UI_ENV,
    REPORTS_ENV,
    REPORTS_URL_ENV,
    S3_ENDPOINT_ENV,
    SAGEMAKER_ENV,
    STORAGE_ENV,
    TRAINING_BACKEND_ENV,
    TRAINING_INSTANCE_ENV,
    default_data_dir,
)
from geo_busyness.resources.tracking import MlflowTracking
from geo_busyness.resources.training_backend import (
    LocalTrainingBackend,
    SageMakerTrainingBackend,
    TrainingBackend,
)

ENVIRONMENTS = ("local", "stack", "aws")
STACK_BUCKET = "geo-busyness"


def environment() -> str:
    """The selected environment, ``local`` unless ``GEO_BUSYNESS_ENV`` says otherwise."""
    name = os.environ.get(ENVIRONMENT_ENV, "local")
    if name not in ENVIRONMENTS:
        raise ValueError(
            f"{ENVIRONMENT_ENV} must be one of {', '.join(ENVIRONMENTS)}, got {name!r}"
        )
    return name


def _required(name: str) -> list[str]:
    """Variables the environment cannot do without, missing from this process's environment."""
    needs = {
        "local": [],
        "stack": [S3_ENDPOINT_ENV, MLFLOW_TRACKING_ENV],
        "aws": [BUCKET_ENV, MLFLOW_TRACKING_ENV],
    }[name]
    return [variable for variable in needs if not os.environ.get(variable)]


def _field(field: str, variable: str, default: str | None = None) -> dict[str, Any]:
    """``{field: dg.EnvVar(variable)}`` when the variable is set (the UI shows its name, never
    its value), else ``{field: default}``, else nothing (the resource's own default)."""
    if os.environ.get(variable):
        return {field: dg.EnvVar(variable)}
    return {field: default} if default else {}


def build_resources() -> dict[str, Any]:
    """Every resource for the environment ``GEO_BUSYNESS_ENV`` names (see the module doc)."""
    name = environment()
    missing = _required(name)
    if missing:
        raise ValueError(
            f"{ENVIRONMENT_ENV}={name} needs {', '.join(missing)} "
            "(README, section 'Environments'; `geo-busyness stack up` sets them for `stack`)"
        )
    bucket = os.environ.get(BUCKET_ENV) or (STACK_BUCKET if name == "stack" else None)

    def in_bucket(prefix: str) -> str:
        """The prefix in the bucket, else in the data directory as of now (not as of when
        the resource classes were imported: the data directory may have been set since)."""
        return f"s3://{bucket}/{prefix}" if bucket else str(default_data_dir() / prefix)

    on_endpoint = _field("s3_endpoint_url", S3_ENDPOINT_ENV)
    reports = os.environ.get(REPORTS_ENV) or in_bucket("reports")
    storage_options = {**_field("base_path", STORAGE_ENV, in_bucket("assets")), **on_endpoint}
    return {
        "landing_zone": LandingZone(
            s3=S3Resource(**_field("endpoint_url", S3_ENDPOINT_ENV)),
            **_field("root", LANDING_ZONE_ENV, in_bucket("landing")),
        ),
        "io_manager": ParquetIOManagerResource(**storage_options),
        "object_io_manager": PickleIOManagerResource(**storage_options),
        "mlflow_tracking": MlflowTracking(
            **_field("tracking_uri", MLFLOW_TRACKING_ENV), **_field("ui_url", MLFLOW_UI_ENV)
        ),
        "promotion_policy": PromotionPolicyResource(),
        "endpoint": endpoint_target("sagemaker" if name == "aws" else "local"),
        "training_backend": training_backend(),
        "report_store": ReportStore(
            **_field("base_path", REPORTS_ENV, reports),
            **_field(
                "public_url",
                REPORTS_URL_ENV,
                None if reports.startswith("s3://") else LOCAL_REPORTS_URL,
            ),
            **on_endpoint,
        ),
        "drift_policy": DriftPolicy(),
        "data_quality_policy": DataQualityPolicy(),
    }


def endpoint_target(default: str = "local") -> EndpointTarget:
    """The environment's endpoint, unless ``GEO_BUSYNESS_ENDPOINT_TARGET`` names another."""
    kind = os.environ.get(ENDPOINT_TARGET_ENV, default)
    if kind == "local":
        return LocalEndpointTarget(port=int(os.environ.get(ENDPOINT_PORT_ENV, "8080")))
    if kind == "sagemaker":
        missing = [name for name in SAGEMAKER_ENV.values() if not os.environ.get(name)]
        if missing:
            raise ValueError(f"{ENDPOINT_TARGET_ENV}=sagemaker needs {', '.join(missing)}")
        return SageMakerEndpointTarget(
            **{field: dg.EnvVar(name) for field, name in SAGEMAKER_ENV.items()}
        )
    raise ValueError(f"{ENDPOINT_TARGET_ENV} must be 'local' or 'sagemaker', got {kind!r}")


def training_backend() -> TrainingBackend:
    """In the step by default; a SageMaker training job of this image when
    ``GEO_BUSYNESS_TRAINING_BACKEND=sagemaker`` (role, image and bucket as for the endpoint)."""
    kind = os.environ.get(TRAINING_BACKEND_ENV, "local")
    if kind == "local":
        return LocalTrainingBackend()
    if kind == "sagemaker":
        needed = {
            field: SAGEMAKER_ENV[field] for field in ("role_arn", "image_uri", "model_bucket")
        }
        missing = [name for name in needed.values() if not os.environ.get(name)]
        if missing:
            raise ValueError(f"{TRAINING_BACKEND_ENV}=sagemaker needs {', '.join(missing)}")
        return SageMakerTrainingBackend(
            role_arn=dg.EnvVar(needed["role_arn"]),
            image_uri=dg.EnvVar(needed["image_uri"]),
            bucket=dg.EnvVar(needed["model_bucket"]),
            **_field("instance_type", TRAINING_INSTANCE_ENV),
        )
    raise ValueError(f"{TRAINING_BACKEND_ENV} must be 'local' or 'sagemaker', got {kind!r}")


def local_resources(root: Path, endpoint_port: int = 8080) -> dict[str, Any]:
    """Every resource with all state under ``root`` (landing zone, assets, MLflow store,
    endpoint state), for throw-away runs: tests, benchmarks, a second demo next to the first."""
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    assets = str(root / "assets")
    return {
        "landing_zone": LandingZone(root=str(root / "landing")),
        "io_manager": ParquetIOManagerResource(base_path=assets),
        "object_io_manager": PickleIOManagerResource(base_path=assets),
        "mlflow_tracking": MlflowTracking(
            tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
        ),
        "promotion_policy": PromotionPolicyResource(),
        "endpoint": LocalEndpointTarget(port=endpoint_port, state_dir=str(root / "endpoint")),
        "training_backend": LocalTrainingBackend(),
        "report_store": ReportStore(base_path=str(root / "reports")),
        "drift_policy": DriftPolicy(),
        "data_quality_policy": DataQualityPolicy(),
    }
