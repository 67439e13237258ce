"""Deployment group: next-day batch forecasts from the champion."""

import dagster as dg
import pandas as pd

from geo_busyness.assets.metadata import OWNER, preview
from geo_busyness.core.features import LOOKBACK_DAYS
from geo_busyness.core.forecast import (
    FORECAST_COLUMN,
    forecast_features,
    forecast_table,
    next_day,
)
from geo_busyness.core.plots import hexagon_map_png, markdown_image
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.city import CityResource
from geo_busyness.resources.tracking import Champion, MlflowTracking

GROUP = "deployment"


@dg.asset(
    partitions_def=daily_partitions,
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
) -> pd.DataFrame:
    day = context.partition_key
    if day not in hex_hourly_busyness:
        raise dg.Failure(
            f"hex_hourly_busyness of {day} is not materialized: the forecast of {next_day(day)} "
            "needs that day's data"
        )
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
    context.add_output_metadata(metadata)
    return table
