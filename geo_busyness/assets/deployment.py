"""Deployment group: next-day batch forecasts from the champion, and the live endpoint that
serves them (a bundle of the champion and the latest forecast's feature snapshot)."""

import json
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from geo_busyness.assets.ingestion import landed_until
from geo_busyness.assets.metadata import OWNER, city_asset, city_in, picture_path, preview
from geo_busyness.automation import on_new_data_latest_day, ready_to_deploy
from geo_busyness.core.city import City
from geo_busyness.core.features import LOOKBACK_DAYS, partial_days
from geo_busyness.core.forecast import (
    FORECAST_COLUMN,
    forecast_features,
    forecast_table,
    next_day,
)
from geo_busyness.core.model import predict_orders
from geo_busyness.core.plots import hexagon_map_png
from geo_busyness.core.redact import redact_data, redact_text, redact_url
from geo_busyness.deploy import DeploymentFailed, DeploymentRecord
from geo_busyness.partitions import city_partitions, window_mapping
from geo_busyness.resources.deployment import EndpointTarget
from geo_busyness.resources.reports import ReportStore
from geo_busyness.resources.tracking import Champion, MlflowTracking
from geo_busyness.serving.bundle import Manifest, write_bundle, write_city_bundle

GROUP = "deployment"
OBJECT_IO = "object_io_manager"
SMOKE_ROWS = 3
ENDPOINT_KEY = dg.AssetKey("endpoint_deployment")


def build_forecast(city: City) -> dg.AssetsDefinition:
    """``busyness_forecast`` of ``city``, made by its champion."""

    @dg.asset(
        partitions_def=city_partitions(city),
        automation_condition=on_new_data_latest_day(city),
        output_required=False,
        **city_asset(city, GROUP),
        kinds={"xgboost", "parquet"},
        ins={
            "restaurant_clusters": city_in(city, "restaurant_clusters"),
            # optional: with no champion yet the forecast says so instead of failing to load it
            "champion_model": city_in(city, "champion_model", metadata={"optional": True}),
            "hex_hourly_busyness": city_in(
                city,
                "hex_hourly_busyness",
                partition_mapping=window_mapping(-(LOOKBACK_DAYS - 1)),
                metadata={"allow_missing_partitions": True},
            ),
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
        champion_model: Champion | None,
        mlflow_tracking: MlflowTracking,
        report_store: ReportStore,
    ) -> Iterator[dg.Output[pd.DataFrame]]:
        mlflow_tracking = mlflow_tracking.for_city(city.id)
        day = context.partition_key
        if champion_model is None:
            skipped(
                context,
                f"no forecast of {next_day(day)}: {city.id} has no champion model yet (no "
                "candidate has passed the promotion checks; materialize the training group)",
            )
            return
        if day not in hex_hourly_busyness:
            # Forecasting from a day that has not landed would use a stale week: wait for it.
            context.log.info(
                f"hex_hourly_busyness of {day} is not materialized: no forecast of {next_day(day)} yet"
            )
            return
        known = {d: frame for d, frame in hex_hourly_busyness.items() if d <= day}
        landed = landed_until(context.instance, city, sorted(known))
        features = forecast_features(hex_hourly_busyness, day, restaurant_clusters, city, landed)
        model = mlflow_tracking.load_version(champion_model.version)
        names = model.get_booster().feature_names
        missing = [name for name in names if name not in features.columns]
        if missing:
            raise dg.Failure(f"champion version {champion_model.version} needs features {missing}")
        predictions = predict_orders(model, features, names) if len(features) else []
        table = forecast_table(features, predictions, champion_model.version)
        per_cell = table.groupby("h3_cell", as_index=False)[FORECAST_COLUMN].sum()
        partial = partial_days(known, landed)
        if partial:
            context.log.warning(
                f"the forecast of {next_day(day)} is made after partial day(s) "
                f"{', '.join(sorted(partial))}: their hours after the data stops are unknown "
                "inputs (not zeros), so the lags that reach them are missing"
            )
        metadata = {
            "forecast_day": next_day(day),
            "after_partial_days": dg.MetadataValue.json(
                {d: mark.isoformat() for d, mark in sorted(partial.items())}
            ),
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
            metadata["forecast_map"] = report_store.picture(
                picture_path(context, city, "forecast_map"), png, "forecast map"
            )
        yield dg.Output(table, metadata=metadata)

    return busyness_forecast


def skipped(context: dg.AssetExecutionContext, reason: str) -> None:
    """No output this run, and why, where the UI shows it: the run log and the asset's events."""
    context.log.warning(reason)
    context.log_event(
        dg.AssetObservation(
            asset_key=context.asset_key,
            partition=context.partition_key if context.has_partition_key else None,
            description=reason,
            metadata={"skipped": reason},
        )
    )


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


@dataclass(frozen=True)
class _Member:
    """What one city contributes to the endpoint: its champion and its latest forecast."""

    city: City
    champion: Champion
    data_day: str
    snapshot: pd.DataFrame
    model: object
    manifest: Manifest


def _members(
    context: dg.AssetExecutionContext,
    cities: Sequence[City],
    inputs: dict,
    mlflow_tracking: MlflowTracking,
) -> list[_Member]:
    """Every city with a champion and a forecast by it; the others are left out (and said)."""
    members = []
    for city in cities:
        champion = inputs[f"{city.key}__champion_model"]
        forecasts = inputs[f"{city.key}__busyness_forecast"] or {}
        if champion is None:
            context.log.warning(f"{city.id}: no champion yet, not served")
            continue
        if not forecasts:
            context.log.warning(f"{city.id}: no busyness_forecast yet, not served")
            continue
        data_day = max(forecasts)
        snapshot = forecasts[data_day]()
        if snapshot.empty:
            context.log.warning(f"{city.id}: busyness_forecast of {data_day} has no rows")
            continue
        tracking = mlflow_tracking.for_city(city.id)
        model = tracking.load_version(champion.version)
        horizon_start = pd.Timestamp(next_day(data_day), tz="UTC")
        manifest = Manifest(
            model_name=tracking.registered_model_name,
            model_version=champion.version,
            mlflow_run_id=champion.run_id,
            feature_names=list(model.get_booster().feature_names),
            h3_resolution=city.h3_resolution,
            horizon_start=horizon_start.isoformat(),
            horizon_end=(horizon_start + pd.Timedelta(days=1)).isoformat(),
        )
        members.append(_Member(city, champion, data_day, snapshot, model, manifest))
    return members


def build_endpoint(cities: Sequence[City]) -> list:
    """``endpoint_deployment``: one endpoint for the hexagons of every city, and its check."""
    ins = {}
    for city in cities:
        # A city without a champion yet (a refused first candidate, a city just onboarded) is
        # left out of the endpoint, not a reason to keep the others from deploying.
        ins[f"{city.key}__champion_model"] = city_in(
            city, "champion_model", metadata={"optional": True}
        )
        ins[f"{city.key}__busyness_forecast"] = city_in(
            city,
            "busyness_forecast",
            partition_mapping=dg.AllPartitionMapping(),
            metadata={"allow_missing_partitions": True, "lazy": True},
        )

    @dg.asset(
        group_name=GROUP,
        owners=[OWNER],
        kinds={"xgboost"},
        io_manager_key=OBJECT_IO,
        output_required=False,
        ins=ins,
        automation_condition=ready_to_deploy(cities),
        description=(
            "Every city's champion serving live behind one `endpoint` (a local server on a "
            "fixed port by default, or a SageMaker endpoint), each with the feature snapshot "
            "of its latest busyness_forecast: a request names hexagons (or coordinates) of any "
            "city. A new bundle takes traffic only after it answered smoke requests of every "
            "city with the in-process predictions; otherwise the previous one keeps serving."
        ),
    )
    def endpoint_deployment(
        context: dg.AssetExecutionContext,
        endpoint: EndpointTarget,
        mlflow_tracking: MlflowTracking,
        **inputs,
    ) -> Iterator[dg.Output[DeploymentRecord]]:
        members = _members(context, cities, inputs, mlflow_tracking)
        if not members:
            skipped(
                context,
                "nothing deployed: no city has both a champion model and a busyness_forecast "
                "made by it yet (see the warnings above for each city)",
            )
            return
        label = "-".join(
            f"{m.city.id}-v{m.champion.version}-{next_day(m.data_day)}" for m in members
        )
        if len(cities) == 1:
            (member,) = members
            bundle = write_bundle(
                endpoint.bundles_dir() / f"v{member.champion.version}-{next_day(member.data_day)}",
                member.model,
                member.snapshot,
                member.manifest,
            )
        else:
            bundle = write_city_bundle(
                endpoint.bundles_dir() / label,
                {m.city.id: (m.model, m.snapshot, m.manifest) for m in members},
            )
        expected = pd.concat(
            [
                smoke_rows(
                    m.snapshot, predict_orders(m.model, m.snapshot, m.manifest.feature_names)
                ).assign(model_version=m.champion.version)
                for m in members
            ],
            ignore_index=True,
        )
        versions = ", ".join(f"{m.city.id} v{m.champion.version}" for m in members)
        try:
            record = endpoint.deploy(
                bundle,
                _instances(expected),
                [
                    {
                        "h3_cell": cell,
                        "hour_start": hour.isoformat(),
                        "busyness": float(value),
                        **({"model_version": version} if len(cities) > 1 else {}),
                    }
                    for cell, hour, value, version in expected.itertuples(index=False)
                ],
            )
        except DeploymentFailed as error:
            raise dg.Failure(
                f"deployment of {versions} refused: {redact_text(str(error))}"
            ) from error
        # Metadata is shown and kept: no credential of an address or a detail goes into it.
        address = redact_url(record.address)
        yield dg.Output(
            record,
            metadata={
                "target": record.target,
                "address": address,
                # what a browser can open: the health route (the root has no page)
                **(
                    {"ping": dg.MetadataValue.url(f"{address.rstrip('/')}/ping")}
                    if address.startswith("http")
                    else {}
                ),
                "model_version": record.model_version,
                "previous_model_version": record.previous_model_version or "none",
                "cities": dg.MetadataValue.json(
                    {
                        m.city.id: {
                            "model_version": m.champion.version,
                            "snapshot_day": next_day(m.data_day),
                            "rows": len(m.snapshot),
                        }
                        for m in members
                    }
                ),
                "snapshot_day": max(next_day(m.data_day) for m in members),
                "bundle": str(bundle),
                "details": dg.MetadataValue.json(redact_data(dict(record.details))),
                "try_it": dg.MetadataValue.md(
                    f"```\n{curl_example(address, _instances(expected.head(1)))}\n```"
                ),
            },
        )

    return [endpoint_deployment, *(_endpoint_check(endpoint_deployment, city) for city in cities)]


def _endpoint_check(endpoint_deployment: dg.AssetsDefinition, city: City):
    """The blocking check that the live endpoint answers ``city`` as its forecast says."""

    @dg.asset_check(
        asset=endpoint_deployment,
        name=f"endpoint_answers_known_request_{city.key}",
        blocking=True,
        additional_ins={
            "busyness_forecast": city_in(
                city,
                "busyness_forecast",
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"allow_missing_partitions": True, "lazy": True},
            )
        },
        description=(
            f"The live endpoint answers the busiest hexagon-hour of {city.id}'s latest forecast "
            f"with the forecast's value and {city.id}'s model version."
        ),
    )
    def endpoint_answers_known_request(
        endpoint_deployment: DeploymentRecord, busyness_forecast: dict
    ) -> dg.AssetCheckResult:
        """Checked through the public address after the switch, against the stored forecast:
        the forecast and the endpoint must agree when they were made by the same version."""
        members = endpoint_deployment.members
        served = not members or city.id in members
        version = (
            str(members[city.id]["model_version"])
            if members and served
            else endpoint_deployment.model_version
        )
        forecast = busyness_forecast[max(busyness_forecast)]() if busyness_forecast else None
        if forecast is not None:
            forecast = forecast.loc[forecast["model_version"] == version]
        if (
            not served
            or forecast is None
            or forecast.empty
            or not endpoint_deployment.address.startswith("http")
        ):
            return dg.AssetCheckResult(
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"{city.id} is not served yet (no champion or no forecast)"
                    if not served
                    else f"no forecast of {city.id} by the deployed version (or no HTTP "
                    "address) to compare with"
                ),
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
        prediction = answer["predictions"][0]
        served = float(prediction["busyness"])
        served_version = str(prediction.get("model_version", answer.get("model_version")))
        expected = float(row[FORECAST_COLUMN].iloc[0])
        return dg.AssetCheckResult(
            passed=bool(np.isclose(served, expected, rtol=1e-5, atol=1e-4))
            and served_version == version,
            metadata={
                "h3_cell": str(row["h3_cell"].iloc[0]),
                "hour_start": str(row["hour_start"].iloc[0]),
                "served": served,
                "expected": expected,
                "served_model_version": served_version,
            },
        )

    return endpoint_answers_known_request


def curl_example(address: str, instances: list[dict]) -> str:
    body = json.dumps({"instances": instances})
    return (
        f"curl -s -X POST {address.rstrip('/')}/invocations "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
