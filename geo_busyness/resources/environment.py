"""Resources built from environment variables, with defaults that need no setup.

| variable | meaning | default |
| --- | --- | --- |
| ``GEO_BUSYNESS_DATA_DIR`` | root of every local default below | ``data/`` in a checkout |
| ``GEO_BUSYNESS_LANDING_ZONE`` | landing zone: directory or ``s3://bucket/prefix`` | ``$DATA_DIR/landing`` |
| ``GEO_BUSYNESS_STORAGE`` | asset storage: directory or ``s3://bucket/prefix`` | ``$DATA_DIR/assets`` |
| ``GEO_BUSYNESS_S3_ENDPOINT_URL`` | S3-compatible endpoint (SeaweedFS, MinIO…) | AWS |
| ``MLFLOW_TRACKING_URI`` | MLflow tracking + registry (``http://…`` server, ``sqlite:///…``) | ``$DATA_DIR/mlflow/mlflow.db`` |
| ``GEO_BUSYNESS_MLFLOW_UI_URL`` | MLflow UI base URL for links in Dagster metadata | none |
| ``GEO_BUSYNESS_REPORTS`` | drift reports (HTML): directory or ``s3://bucket/prefix`` | ``$DATA_DIR/reports`` |
| ``GEO_BUSYNESS_ENDPOINT_TARGET`` | where ``endpoint_deployment`` deploys: ``local`` or ``sagemaker`` | local |
| ``GEO_BUSYNESS_ENDPOINT_PORT`` | port of the local model endpoint (127.0.0.1) | 8080 |
| ``GEO_BUSYNESS_SAGEMAKER_*`` | ``ENDPOINT``, ``ROLE_ARN``, ``IMAGE_URI``, ``BUCKET`` of the SageMaker target | required for sagemaker |

Set variables are passed as ``dg.EnvVar`` so the UI shows the variable, never its value;
S3 credentials come from the AWS default chain (``AWS_ACCESS_KEY_ID``… or a role).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from geo_busyness.resources.city import CityResource
from geo_busyness.resources.deployment import (
    EndpointTarget,
    LocalEndpointTarget,
    SageMakerEndpointTarget,
)
from geo_busyness.resources.io_manager import ParquetIOManagerResource, PickleIOManagerResource
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.resources.promotion import PromotionPolicyResource
from geo_busyness.resources.reports import DriftPolicy, ReportStore
from geo_busyness.resources.tracking import MlflowTracking

LANDING_ZONE_ENV = "GEO_BUSYNESS_LANDING_ZONE"
STORAGE_ENV = "GEO_BUSYNESS_STORAGE"
S3_ENDPOINT_ENV = "GEO_BUSYNESS_S3_ENDPOINT_URL"
MLFLOW_TRACKING_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_UI_ENV = "GEO_BUSYNESS_MLFLOW_UI_URL"
ENDPOINT_PORT_ENV = "GEO_BUSYNESS_ENDPOINT_PORT"
REPORTS_ENV = "GEO_BUSYNESS_REPORTS"
ENDPOINT_TARGET_ENV = "GEO_BUSYNESS_ENDPOINT_TARGET"
SAGEMAKER_ENV = {
    "endpoint_name": "GEO_BUSYNESS_SAGEMAKER_ENDPOINT",
    "role_arn": "GEO_BUSYNESS_SAGEMAKER_ROLE_ARN",
    "image_uri": "GEO_BUSYNESS_SAGEMAKER_IMAGE_URI",
    "model_bucket": "GEO_BUSYNESS_SAGEMAKER_BUCKET",
}


def _from_env(name: str) -> dict[str, Any]:
    return {"value": dg.EnvVar(name)} if os.environ.get(name) else {}


def build_resources() -> dict[str, Any]:
    endpoint = _from_env(S3_ENDPOINT_ENV)
    landing = {"root": dg.EnvVar(LANDING_ZONE_ENV)} if os.environ.get(LANDING_ZONE_ENV) else {}
    storage = {"base_path": dg.EnvVar(STORAGE_ENV)} if os.environ.get(STORAGE_ENV) else {}
    s3 = S3Resource(endpoint_url=endpoint["value"]) if endpoint else S3Resource()
    storage_options = {**storage, **({"s3_endpoint_url": endpoint["value"]} if endpoint else {})}
    tracking = (
        {"tracking_uri": dg.EnvVar(MLFLOW_TRACKING_ENV)}
        if os.environ.get(MLFLOW_TRACKING_ENV)
        else {}
    )
    ui = {"ui_url": dg.EnvVar(MLFLOW_UI_ENV)} if os.environ.get(MLFLOW_UI_ENV) else {}
    return {
        "city": CityResource(),
        "landing_zone": LandingZone(s3=s3, **landing),
        "io_manager": ParquetIOManagerResource(**storage_options),
        "object_io_manager": PickleIOManagerResource(**storage_options),
        "mlflow_tracking": MlflowTracking(**tracking, **ui),
        "promotion_policy": PromotionPolicyResource(),
        "endpoint": endpoint_target(),
        "report_store": ReportStore(
            **({"base_path": dg.EnvVar(REPORTS_ENV)} if os.environ.get(REPORTS_ENV) else {}),
            **({"s3_endpoint_url": endpoint["value"]} if endpoint else {}),
        ),
        "drift_policy": DriftPolicy(),
    }


def endpoint_target() -> EndpointTarget:
    """The local endpoint by default; SageMaker when ``GEO_BUSYNESS_ENDPOINT_TARGET=sagemaker``."""
    kind = os.environ.get(ENDPOINT_TARGET_ENV, "local")
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


def local_resources(root: Path, endpoint_port: int = 8080) -> dict[str, Any]:
    """Every resource with all state under ``root`` (landing zone, assets, MLflow store,
    endpoint state), for throw-away runs: tests, benchmarks, a second demo next to the first."""
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    assets = str(root / "assets")
    return {
        "city": CityResource(),
        "landing_zone": LandingZone(root=str(root / "landing")),
        "io_manager": ParquetIOManagerResource(base_path=assets),
        "object_io_manager": PickleIOManagerResource(base_path=assets),
        "mlflow_tracking": MlflowTracking(
            tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
        ),
        "promotion_policy": PromotionPolicyResource(),
        "endpoint": LocalEndpointTarget(port=endpoint_port, state_dir=str(root / "endpoint")),
        "report_store": ReportStore(base_path=str(root / "reports")),
        "drift_policy": DriftPolicy(),
    }
