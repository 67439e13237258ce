"""Features group, per city: restaurants and their neighbourhoods, hourly busyness, forecasting
features."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from geo_busyness.assets.ingestion import landed_until
from geo_busyness.assets.metadata import city_asset, city_in, picture_path, preview
from geo_busyness.automation import on_new_checked_data, on_new_data
from geo_busyness.core.city import City
from geo_busyness.core.features import (
    LOOKBACK_DAYS,
    cluster_restaurants,
    day_end,
    feature_columns,
    partial_days,
    restaurant_sightings,
    restaurants_from_sightings,
)
from geo_busyness.core.features import (
    busyness_features as build_busyness_features,
)
from geo_busyness.core.features import (
    hex_hourly_busyness as build_hex_hourly_busyness,
)
from geo_busyness.core.plots import hexagon_map_png
from geo_busyness.partitions import city_partitions, window_mapping
from geo_busyness.resources.reports import ReportStore

GROUP = "features"
RESTAURANT_COLUMNS = ["restaurant_lat", "restaurant_lon"]


def build_features(city: City) -> list:
    """The feature assets of ``city``."""
    partitions = city_partitions(city)

    @dg.asset(
        automation_condition=on_new_data(city),
        **city_asset(city, GROUP),
        kinds={"pandas", "parquet"},
        ins={
            "clean_courier_pings": city_in(
                city,
                "clean_courier_pings",
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"columns": RESTAURANT_COLUMNS, "allow_missing_partitions": True},
            )
        },
        description=(
            "Restaurants seen in the clean pings of every materialized day. `restaurant_id` is a hash "
            "of the coordinates rounded to ~1 m, so ids are stable across runs and re-materializations."
        ),
    )
    def restaurants(
        context: dg.AssetExecutionContext,
        clean_courier_pings: dict[str, pd.DataFrame],
    ) -> pd.DataFrame:
        sightings = {day: restaurant_sightings(frame) for day, frame in clean_courier_pings.items()}
        table = restaurants_from_sightings(sightings, city.h3_resolution)
        context.add_output_metadata(
            {
                "days_read": len(sightings),
                "restaurants": len(table),
                "hexagons_with_restaurants": int(table["h3_cell"].nunique()) if len(table) else 0,
                "preview": preview(table),
            }
        )
        return table

    @dg.asset(
        automation_condition=on_new_data(city),
        **city_asset(city, GROUP),
        kinds={"scikitlearn", "parquet"},
        ins={"restaurants": city_in(city, "restaurants")},
        description=(
            "K-means neighbourhoods of restaurants (labels ordered south to north, stable between runs) "
            "with each restaurant's cluster centroid: the cluster embedding of the features."
        ),
    )
    def restaurant_clusters(
        context: dg.AssetExecutionContext, restaurants: pd.DataFrame
    ) -> pd.DataFrame:
        clustered = cluster_restaurants(restaurants, city.n_restaurant_clusters)
        sizes = clustered.groupby("cluster").agg(
            restaurants=("restaurant_id", "size"),
            centroid_lat=("centroid_lat", "first"),
            centroid_lon=("centroid_lon", "first"),
        )
        context.add_output_metadata({"clusters": dg.MetadataValue.md(sizes.round(5).to_markdown())})
        return clustered

    @dg.asset(
        partitions_def=partitions,
        automation_condition=on_new_checked_data(city),
        **city_asset(city, GROUP),
        kinds={"pandas", "h3", "parquet"},
        ins={"clean_courier_pings": city_in(city, "clean_courier_pings")},
        description=(
            "Per H3 cell and UTC hour of the day: distinct orders (the busyness target), pings, "
            "couriers and mean courier→restaurant distance."
        ),
    )
    def hex_hourly_busyness(
        context: dg.AssetExecutionContext,
        clean_courier_pings: pd.DataFrame,
        report_store: ReportStore,
    ) -> pd.DataFrame:
        hourly = build_hex_hourly_busyness(clean_courier_pings, city.h3_resolution)
        per_cell = hourly.groupby("h3_cell", as_index=False)["orders"].sum()
        newest_ping = clean_courier_pings["courier_location_timestamp"].max()
        metadata = {
            "hexagons": len(per_cell),
            "orders": int(hourly["orders"].sum()),
            "pings": int(hourly["pings"].sum()),
            # the day's watermark: busyness_features decides from it whether the day is partial
            "newest_ping": str(newest_ping) if len(clean_courier_pings) else "none",
            "preview": preview(hourly),
        }
        if len(per_cell):
            png = hexagon_map_png(
                per_cell["h3_cell"].to_numpy(),
                per_cell["orders"].to_numpy(),
                f"Orders per hexagon, {context.partition_key}",
                "orders",
            )
            metadata["busyness_map"] = report_store.picture(
                picture_path(context, city, "busyness_map"), png, "busyness map"
            )
        context.add_output_metadata(metadata)
        return hourly

    @dg.asset(
        partitions_def=partitions,
        automation_condition=on_new_data(city),
        output_required=False,
        **city_asset(city, GROUP),
        kinds={"pandas", "parquet"},
        ins={
            "restaurant_clusters": city_in(city, "restaurant_clusters"),
            "hex_hourly_busyness": city_in(
                city,
                "hex_hourly_busyness",
                partition_mapping=window_mapping(-LOOKBACK_DAYS),
                metadata={"allow_missing_partitions": True},
            ),
        },
        description=(
            "Leak-free forecasting features for every active hexagon and hour of the day: lags "
            "1h/24h/168h, rolling means, local hour/day of week, restaurants and cluster mix per "
            f"hexagon, neighbour-ring busyness, courier→restaurant distances. Reads the {LOOKBACK_DAYS} "
            "previous days of hex_hourly_busyness; hours of days not materialized are unknown (NaN)."
        ),
    )
    def busyness_features(
        context: dg.AssetExecutionContext,
        hex_hourly_busyness: dict[str, pd.DataFrame],
        restaurant_clusters: pd.DataFrame,
    ) -> Iterator[dg.Output[pd.DataFrame]]:
        day = context.partition_key
        if day not in hex_hourly_busyness:
            # A day without data has no targets: featurizing it would teach the model zeros.
            # Automation asks for it when an earlier day in its history window updates.
            context.log.info(
                f"hex_hourly_busyness of {day} is not materialized: nothing to featurize"
            )
            return
        landed = landed_until(context.instance, city, sorted(hex_hourly_busyness))
        features = build_busyness_features(
            hex_hourly_busyness, day, restaurant_clusters, city, landed
        )
        missing_share = features[feature_columns(city.n_restaurant_clusters)].isna().mean()
        partial = partial_days(hex_hourly_busyness, landed)
        if day in partial:
            context.log.warning(
                f"{day} is partial: its data stops at {partial[day].isoformat()}; the hours after "
                "it are unknown, not zero, and are no targets"
            )
        yield dg.Output(
            features,
            metadata={
                "day_complete": day not in partial,
                "observed_until": partial.get(day, day_end(day)).isoformat(),
                "partial_days_in_history": dg.MetadataValue.json(
                    {d: mark.isoformat() for d, mark in sorted(partial.items()) if d != day}
                ),
                "history_days_available": len(hex_hourly_busyness) - 1,
                "hexagons": int(features["h3_cell"].nunique()),
                "rows": len(features),
                "missing_share_by_feature": dg.MetadataValue.json(
                    {name: round(float(value), 4) for name, value in missing_share.items()}
                ),
                "preview": preview(features),
            },
        )

    return [restaurants, restaurant_clusters, hex_hourly_busyness, busyness_features]
