"""Deployment group: next-day batch forecasts from the champion, and the live endpoint that
serves them (a bundle of the champion and the latest forecast's feature snapshot)."""

import json
import urllib.request
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd

from geo_busyness.assets.metadata import OWNER, preview
from geo_busyness.automation import on_new_data_latest_day, ready_to_deploy
from geo_busyness.core.features import LOOKBACK_DAYS
from geo_busyness.core.forecast import (
    FORECAST_COLUMN,
    forecast_features,
    forecast_table,
    next_day,
)
from geo_busyness.core.plots import hexagon_map_png, markdown_image
from geo_busyness.core.redact import redact_data, redact_text, redact_url
from geo_busyness.deploy import DeploymentFailed, DeploymentRecord
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.city import CityResource
from geo_busyness.resources.deployment import EndpointTarget
from geo_busyness.resources.tracking import Champion, MlflowTracking
from geo_busyness.serving.bundle import Manifest, write_bundle

GROUP = "deployment"
OBJECT_IO = "object_io_manager"
SMOKE_ROWS = 3


@dg.asset(
    partitions_def=daily_partitions,
    automation_condition=on_new_data_latest_day(),
    output_required=False,
    group_name=GROUP,
    owners=[OWNER],
    kinds={"xgboost", "parquet"},
    ins={
        "hex_hourly_busyness": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-(LOOKBACK_DAYS - 1), allow_nonexistent_upstream_partitions=True
            ),
            metadata={"allow_missing_partitions": True},
        )
    },
    description=(
        "Forecast for every active hexagon and hour of the day AFTER the partition's day, made by "
        "the champion from data up to the end of the partition's day (the same day-ahead "
        f"features as training, from the {LOOKBACK_DAYS} days ending with it). Keeps the "
        "feature rows next to the prediction: they are the snapshot an endpoint deployment ships."
    ),
)
def busyness_forecast(
    context: dg.AssetExecutionContext,
    hex_hourly_busyness: dict[str, pd.DataFrame],
    restaurant_clusters: pd.DataFrame,
    champion_model: Champion,
    city: CityResource,
    mlflow_tracking: MlflowTracking,
) -> Iterator[dg.Output[pd.DataFrame]]:
    day = context.partition_key
    if day not in hex_hourly_busyness:
        # Forecasting from a day that has not landed would use a stale week: wait for it.
        context.log.info(
            f"hex_hourly_busyness of {day} is not materialized: no forecast of {next_day(day)} yet"
        )
        return
    features = forecast_features(hex_hourly_busyness, day, restaurant_clusters, city.to_city())
    model = mlflow_tracking.load_version(champion_model.version)
    names = model.get_booster().feature_names
    missing = [name for name in names if name not in features.columns]
    if missing:
        raise dg.Failure(f"champion version {champion_model.version} needs features {missing}")
    predictions = model.predict(features[names]) if len(features) else []
    table = forecast_table(features, predictions, champion_model.version)
    per_cell = table.groupby("h3_cell", as_index=False)[FORECAST_COLUMN].sum()
    metadata = {
        "forecast_day": next_day(day),
        "model_version": champion_model.version,
        "hexagons": len(per_cell),
        "rows": len(table),
        "predicted_orders": round(float(table[FORECAST_COLUMN].sum()), 1),
        "history_days_available": len(hex_hourly_busyness),
        "preview": preview(table[["h3_cell", "hour_start", FORECAST_COLUMN, "model_version"]]),
    }
    if len(per_cell):
        png = hexagon_map_png(
            per_cell["h3_cell"].to_numpy(),
            per_cell[FORECAST_COLUMN].to_numpy(),
            f"Forecast orders per hexagon, {next_day(day)}",
            "predicted orders",
        )
        metadata["forecast_map"] = dg.MetadataValue.md(markdown_image(png, "forecast map"))
    yield dg.Output(table, metadata=metadata)


def smoke_rows(
    snapshot: pd.DataFrame, predictions: np.ndarray, rows: int = SMOKE_ROWS
) -> pd.DataFrame:
    """The hexagon-hours with the highest predictions: a deployment that answers them with the
    in-process values serves the right model on the right snapshot."""
    ranked = snapshot[["h3_cell", "hour_start"]].assign(busyness=np.asarray(predictions, float))
    return ranked.nlargest(rows, "busyness")


def _instances(rows: pd.DataFrame) -> list[dict]:
    return [
        {"h3_cell": str(cell), "timestamp": hour.isoformat()}
        for cell, hour in zip(rows["h3_cell"], rows["hour_start"], strict=True)
    ]


@dg.asset(
    group_name=GROUP,
    owners=[OWNER],
    kinds={"xgboost"},
    io_manager_key=OBJECT_IO,
    ins={
        "busyness_forecast": dg.AssetIn(
            partition_mapping=dg.AllPartitionMapping(),
            metadata={"allow_missing_partitions": True, "lazy": True},
        )
    },
    automation_condition=ready_to_deploy(),
    description=(
        "The champion serving live behind the `endpoint` resource (a local server on a fixed "
        "port by default, or a SageMaker endpoint), with the feature snapshot of the latest "
        "busyness_forecast. A new model takes traffic only after it answered a smoke request "
        "with the in-process prediction; otherwise the previous one keeps serving."
    ),
)
def endpoint_deployment(
    context: dg.AssetExecutionContext,
    champion_model: Champion,
    busyness_forecast: dict,
    endpoint: EndpointTarget,
    mlflow_tracking: MlflowTracking,
    city: CityResource,
) -> DeploymentRecord:
    if not busyness_forecast:
        raise dg.Failure("no busyness_forecast partition is materialized: forecast a day first")
    data_day = max(busyness_forecast)
    snapshot = busyness_forecast[data_day]()
    if snapshot.empty:
        raise dg.Failure(f"busyness_forecast of {data_day} has no rows to serve")
    model = mlflow_tracking.load_version(champion_model.version)
    names = model.get_booster().feature_names
    horizon_start = pd.Timestamp(next_day(data_day), tz="UTC")
    manifest = Manifest(
        model_name=mlflow_tracking.registered_model_name,
        model_version=champion_model.version,
        mlflow_run_id=champion_model.run_id,
        feature_names=list(names),
        h3_resolution=city.h3_resolution,
        horizon_start=horizon_start.isoformat(),
        horizon_end=(horizon_start + pd.Timedelta(days=1)).isoformat(),
    )
    bundle = write_bundle(
        endpoint.bundles_dir() / f"v{champion_model.version}-{next_day(data_day)}",
        model,
        snapshot,
        manifest,
    )
    expected = smoke_rows(snapshot, model.predict(snapshot[names]))
    try:
        record = endpoint.deploy(
            bundle,
            _instances(expected),
            [
                {"h3_cell": cell, "hour_start": hour.isoformat(), "busyness": float(value)}
                for cell, hour, value in expected.itertuples(index=False)
            ],
        )
    except DeploymentFailed as error:
        raise dg.Failure(
            f"deployment of version {champion_model.version} refused: {redact_text(str(error))}"
        ) from error
    # Metadata is shown and kept: no credential of an address or a detail goes into it.
    address = redact_url(record.address)
    context.add_output_metadata(
        {
            "target": record.target,
            "address": dg.MetadataValue.url(address) if address.startswith("http") else address,
            "model_version": record.model_version,
            "previous_model_version": record.previous_model_version or "none",
            "snapshot_day": next_day(data_day),
            "bundle": str(bundle),
            "details": dg.MetadataValue.json(redact_data(dict(record.details))),
            "try_it": dg.MetadataValue.md(
                f"```\n{curl_example(address, _instances(expected.head(1)))}\n```"
            ),
        }
    )
    return record


def curl_example(address: str, instances: list[dict]) -> str:
    body = json.dumps({"instances": instances})
    return (
        f"curl -s -X POST {address.rstrip('/')}/invocations "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )


@dg.asset_check(
    asset=endpoint_deployment,
    blocking=True,
    additional_ins={
        "busyness_forecast": dg.AssetIn(
            partition_mapping=dg.AllPartitionMapping(),
            metadata={"allow_missing_partitions": True, "lazy": True},
        )
    },
    description="The live endpoint answers a known request with the forecast's value.",
)
def endpoint_answers_known_request(
    endpoint_deployment: DeploymentRecord, busyness_forecast: dict
) -> dg.AssetCheckResult:
    """Checked through the public address after the switch, against the stored forecast: the
    forecast and the endpoint must agree when they were made by the same model version."""
    forecast = busyness_forecast[max(busyness_forecast)]()
    forecast = forecast.loc[forecast["model_version"] == endpoint_deployment.model_version]
    if forecast.empty or not endpoint_deployment.address.startswith("http"):
        return dg.AssetCheckResult(
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description="no forecast by the deployed version (or no HTTP address) to compare with",
        )
    row = forecast.nlargest(1, FORECAST_COLUMN)
    request = urllib.request.Request(
        f"{endpoint_deployment.address.rstrip('/')}/invocations",
        data=json.dumps({"instances": _instances(row)}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    except OSError as error:
        return dg.AssetCheckResult(
            passed=False, description=f"endpoint unreachable: {redact_text(str(error))}"
        )
    served = float(answer["predictions"][0]["busyness"])
    expected = float(row[FORECAST_COLUMN].iloc[0])
    return dg.AssetCheckResult(
        passed=bool(np.isclose(served, expected, rtol=1e-5, atol=1e-4))
        and str(answer.get("model_version")) == endpoint_deployment.model_version,
        metadata={
            "h3_cell": str(row["h3_cell"].iloc[0]),
            "hour_start": str(row["hour_start"].iloc[0]),
            "served": served,
            "expected": expected,
            "served_model_version": str(answer.get("model_version")),
        },
    )
