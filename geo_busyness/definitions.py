"""The code location: one Definitions object with assets, checks, sensors, jobs and resources."""

from __future__ import annotations

import os

import dagster as dg

from geo_busyness.assets import deployment, features, ingestion, monitoring, training
from geo_busyness.assets.deployment import endpoint_answers_known_request
from geo_busyness.automation import automation_sensor
from geo_busyness.checks import data_checks, model_checks
from geo_busyness.resources.environment import build_resources
from geo_busyness.resources.settings import EXECUTOR_ENV
from geo_busyness.retraining import (
    TRAINING_RUN_TAGS,
    drift_retrain_sensor,
    first_model_sensor,
    retrain_job,
    weekly_retrain,
)
from geo_busyness.sensors import landing_zone_sensor

all_assets = dg.load_assets_from_modules([ingestion, features, training, deployment, monitoring])

data_pipeline_job = dg.define_asset_job(
    "daily_data_job",
    selection=dg.AssetSelection.groups("ingestion")
    | dg.AssetSelection.assets("hex_hourly_busyness", "busyness_features"),
    description="Ingest, validate and featurize one day partition.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training"),
    tags=TRAINING_RUN_TAGS,
    description=(
        "Assemble the training set, train and evaluate a candidate, and promote it to champion "
        "if every blocking check passes."
    ),
)


def executor() -> dg.ExecutorDefinition:
    """In-process by default: a step is seconds of pandas work, and a process per step costs
    ~8 s of imports; runs of different days still run in parallel. ``multiprocess`` for hosts
    with many cores. ``k8s`` runs every step as its own Kubernetes Job (next to the
    K8sRunLauncher, deploy/k8s/values.yaml), so a step gets a pod sized for it (training)."""
    kind = os.environ.get(EXECUTOR_ENV, "in_process")
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "multiprocess":
        return dg.multiprocess_executor
    if kind == "k8s":
        # Imported only here: dagster_k8s pulls in the Kubernetes client.
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(
        f"{EXECUTOR_ENV} must be one of 'in_process', 'multiprocess', 'k8s', got {kind!r}"
    )


defs = dg.Definitions(
    assets=all_assets,
    asset_checks=[*data_checks, *model_checks, endpoint_answers_known_request],
    jobs=[data_pipeline_job, training_job, retrain_job],
    sensors=[automation_sensor, landing_zone_sensor, drift_retrain_sensor, first_model_sensor],
    schedules=[weekly_retrain],
    resources=build_resources(),
    executor=executor(),
)
