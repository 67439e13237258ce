"""The code location: one Definitions object with assets, checks, sensors, jobs and resources."""

from __future__ import annotations

import dagster as dg

from geo_busyness.assets import deployment, features, ingestion, training
from geo_busyness.assets.deployment import endpoint_answers_known_request
from geo_busyness.automation import automation_sensor
from geo_busyness.checks import data_checks, model_checks
from geo_busyness.resources.environment import build_resources

all_assets = dg.load_assets_from_modules([ingestion, features, training, deployment])

data_pipeline_job = dg.define_asset_job(
    "daily_data_job",
    selection=dg.AssetSelection.groups("ingestion")
    | dg.AssetSelection.assets("hex_hourly_busyness", "busyness_features"),
    description="Ingest, validate and featurize one day partition.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training"),
    description=(
        "Assemble the training set, train and evaluate a candidate, and promote it to champion "
        "if every blocking check passes."
    ),
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=[*data_checks, *model_checks, endpoint_answers_known_request],
    jobs=[data_pipeline_job, training_job],
    sensors=[automation_sensor],
    resources=build_resources(),
)
