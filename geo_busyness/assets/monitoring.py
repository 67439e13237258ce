"""Monitoring group: does the day's data still look like the training data, and is the
forecast still as accurate as the model was on its test slice?

``drift_report[dt]`` compares the features of day dt with the train rows of ``training_set``
(Evidently; the HTML goes to the ``report_store``) and, once the actuals of dt have landed,
the forecast made for dt with them. Its ``drift_within_threshold`` check warns when the
``drift_policy`` says the model should be retrained.
"""

import datetime
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from geo_busyness.assets.metadata import city_asset, city_in, picture_path
from geo_busyness.automation import on_new_day_of_monitoring
from geo_busyness.core.city import City
from geo_busyness.core.drift import (
    CALENDAR_COLUMNS,
    DEFAULT_REFERENCE_ROWS,
    DriftResult,
    ErrorGrowth,
    drift_chart_png,
    feature_drift,
    forecast_error_growth,
    monitored_columns,
    needs_retraining,
)
from geo_busyness.core.features import feature_columns
from geo_busyness.core.forecast import FORECAST_COLUMN
from geo_busyness.core.lifecycle import MODEL, SPLIT_COLUMN
from geo_busyness.core.redact import redact_text
from geo_busyness.partitions import city_partitions, window_mapping
from geo_busyness.resources.reports import DriftPolicy, ReportStore, report_link
from geo_busyness.resources.tracking import MlflowTracking

GROUP = "monitoring"
REPORT_FOLDER = "drift_reports"
CHECK_NAME = "drift_within_threshold"
# model_evaluation logs each predictor's test metrics into the candidate's MLflow run, so the
# run behind a registered version keeps the test MAE that version had when it was trained.
TEST_MAE_METRIC = f"test_{MODEL}_mae"
FORECAST_COLUMNS = ["h3_cell", "hour_start", FORECAST_COLUMN, "model_version"]
ACTUAL_COLUMNS = ["h3_cell", "hour_start", "orders"]


class DriftReportConfig(dg.Config):
    max_reference_rows: int = Field(
        default=DEFAULT_REFERENCE_ROWS,
        ge=1,
        description="Train rows sampled as the reference (the tests' cost grows with it).",
    )
    seed: int = Field(default=0, description="Seed of the reference sample.")


def _optional_partitions(_, value) -> bool:
    return value is None or isinstance(value, dict)


# The IO manager returns a dict for a `dict` typed input, but None when the mapping yields no
# partition at all (the day before the first partition); `typing_type=dict` keeps the dict.
OptionalPartitions = dg.DagsterType(
    type_check_fn=_optional_partitions,
    name="OptionalPartitions",
    description="Loaded partitions by key, or None when the mapping yields none.",
    typing_type=dict,
)


def build_monitoring(city: City) -> dg.AssetsDefinition:
    """``drift_report`` of ``city``, against its own training set and champion."""

    @dg.asset(
        partitions_def=city_partitions(city),
        automation_condition=on_new_day_of_monitoring(city),
        **city_asset(city, GROUP),
        kinds={"evidently", "pandas", "parquet"},
        ins={
            "busyness_features": city_in(city, "busyness_features"),
            "training_set": city_in(city, "training_set"),
            "busyness_forecast": city_in(
                city,
                "busyness_forecast",
                partition_mapping=window_mapping(-1, -1),
                metadata={"allow_missing_partitions": True, "columns": FORECAST_COLUMNS},
                dagster_type=OptionalPartitions,
            ),
            "hex_hourly_busyness": city_in(
                city,
                "hex_hourly_busyness",
                metadata={"allow_missing_partitions": True, "columns": ACTUAL_COLUMNS},
                dagster_type=OptionalPartitions,
            ),
        },
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=dg.AssetKey([city.key, "drift_report"]),
                description=(
                    "WARN when the share of drifted features or the forecast error growth is above "
                    "the drift_policy limits: the model should be retrained."
                ),
            )
        ],
        description=(
            "Data drift of the day's busyness_features against the train rows of training_set, "
            "one row per monitored feature (Evidently score, test, threshold, drifted), with the "
            "full Evidently HTML report in the report_store. Once the day's actual orders have "
            "landed, also the MAE of busyness_forecast of the day before (the forecast FOR this "
            "day) relative to the test MAE of the model version that made it."
        ),
    )
    def drift_report(
        context: dg.AssetExecutionContext,
        config: DriftReportConfig,
        busyness_features: pd.DataFrame,
        training_set: pd.DataFrame,
        busyness_forecast,
        hex_hourly_busyness,
        report_store: ReportStore,
        drift_policy: DriftPolicy,
        mlflow_tracking: MlflowTracking,
    ):
        day = context.partition_key
        names = monitored_columns(feature_columns(city.n_restaurant_clusters))
        mlflow_tracking = mlflow_tracking.for_city(city.id)
        reference = training_set.loc[training_set[SPLIT_COLUMN] == "train"]
        for name, frame in (
            ("training_set (train rows)", reference),
            ("busyness_features", busyness_features),
        ):
            missing = [column for column in names if column not in frame.columns]
            if missing:
                raise dg.Failure(
                    f"{name} lacks feature columns {missing}: were they materialized before "
                    f"{city.id}'s restaurant_clusters changed in the catalog?"
                )
        if busyness_features.empty:
            raise dg.Failure(
                f"busyness_features of {day} has no rows (the first materialized day has no "
                "history to build features from): nothing to compare with the reference"
            )
        if reference.empty:
            raise dg.Failure("training_set has no train rows: materialize the training group first")

        import evidently  # noqa: F401  (seconds on a process's first report: not in drift_seconds)

        started = time.perf_counter()
        try:
            result = feature_drift(
                reference, busyness_features, names, config.max_reference_rows, config.seed
            )
        except ValueError as error:
            raise dg.Failure(f"drift of {day} against training_set: {error}") from error
        drift_seconds = time.perf_counter() - started
        location = report_store.save(
            f"{REPORT_FOLDER}/{city.id}/{day}.html",
            result.html.encode(),
            "text/html; charset=utf-8",
        )
        growth, growth_note, version = _error_growth(
            day, busyness_forecast or {}, hex_hourly_busyness or {}, mlflow_tracking
        )

        retrain, why = needs_retraining(
            result.drift_share, growth.error_ratio if growth else None, drift_policy.to_thresholds()
        )
        metadata = {
            **_drift_metadata(day, result, reference, busyness_features, location),
            **_drift_picture(context, city, result, reference, busyness_features, report_store),
            **_growth_metadata(growth, growth_note, version),
            "drift_seconds": round(drift_seconds, 2),
        }
        yield dg.Output(_ordered(result.columns), metadata=metadata)
        yield dg.AssetCheckResult(
            check_name=CHECK_NAME,
            passed=not retrain,
            severity=dg.AssetCheckSeverity.WARN,
            description=("retraining due: " if retrain else "within limits: ") + why,
            metadata={
                "retraining_due": retrain,
                "drift_share": result.drift_share,
                "max_drift_share": drift_policy.max_drift_share,
                "max_error_ratio": drift_policy.max_error_ratio,
                # Only when known: a numeric series stays plottable across partitions.
                **({"error_ratio": growth.error_ratio} if growth else {}),
            },
        )

    return drift_report


def _ordered(columns: pd.DataFrame) -> pd.DataFrame:
    """Drifted columns first; otherwise in feature order."""
    return columns.sort_values("drifted", ascending=False, kind="stable").reset_index(drop=True)


def _drift_metadata(
    day: str,
    result: DriftResult,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    location: str,
) -> dict:
    start = pd.Timestamp(day, tz="UTC")
    hours = reference["hour_start"]
    skipped = {
        **{name: "calendar column: always differs on one day" for name in CALENDAR_COLUMNS},
        **result.skipped,
    }
    metadata = {
        "drift_share": result.drift_share,
        "n_drifted": result.n_drifted,
        "n_tested": len(result.columns),
        "drifted_columns": dg.MetadataValue.json(result.drifted_columns),
        "dataset_drift": result.dataset_drift,
        "report": report_link(location),
        "drift_table": dg.MetadataValue.md(
            _ordered(result.columns).round(4).to_markdown(index=False)
        ),
        "skipped_columns": dg.MetadataValue.json(skipped),
        "current_rows": result.current_rows,
        "reference_rows": result.reference_rows,
        "reference_rows_available": result.reference_rows_available,
        "reference_range": f"{hours.min()} to {hours.max()}",
        # A day the model was trained on cannot look drifted: read its report with care.
        "day_in_reference": bool(((hours >= start) & (hours < start + pd.Timedelta(days=1))).any()),
    }
    return metadata


def _drift_picture(
    context: dg.AssetExecutionContext,
    city: City,
    result: DriftResult,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    report_store: ReportStore,
) -> dict[str, dg.MetadataValue]:
    png = drift_chart_png(reference, current, result)
    if png is None:
        return {}
    return {
        "drifted_distributions": report_store.picture(
            picture_path(context, city, "drifted_distributions"),
            png,
            "reference vs current distributions of the drifted columns",
        )
    }


def _error_growth(
    day: str, forecasts: dict, actuals: dict, mlflow_tracking: MlflowTracking
) -> tuple[ErrorGrowth | None, str, str | None]:
    """(growth, note, model version): None with the reason when something is missing."""
    forecast_day = (datetime.date.fromisoformat(day) - datetime.timedelta(days=1)).isoformat()
    if forecast_day not in forecasts:
        return None, f"busyness_forecast of {forecast_day} (the forecast of {day}) is missing", None
    if day not in actuals:
        return None, f"hex_hourly_busyness of {day} (the actual orders) is missing", None
    forecast = forecasts[forecast_day]
    if forecast.empty:
        return None, f"busyness_forecast of {forecast_day} has no rows", None
    versions = forecast["model_version"].astype(str).unique()
    if len(versions) != 1:
        raise dg.Failure(
            f"busyness_forecast of {forecast_day} mixes model versions {sorted(versions)}"
        )
    version = str(versions[0])
    training_mae, note = _training_mae(mlflow_tracking, version)
    if training_mae is None:
        return None, note, version
    try:
        growth = forecast_error_growth(forecast, actuals[day], training_mae)
    except ValueError as error:
        raise dg.Failure(f"forecast error of {day}: {error}") from error
    return growth, note, version


def _training_mae(mlflow_tracking: MlflowTracking, version: str) -> tuple[float | None, str]:
    """Test MAE of the registered ``version`` when it was trained, from its MLflow run: the
    model that made the forecast, which need not be today's champion or the latest
    model_evaluation's candidate."""
    from mlflow.exceptions import MlflowException

    client = mlflow_tracking.client()
    name = mlflow_tracking.registered_model_name
    try:
        run_id = client.get_model_version(name, version).run_id
        metrics = client.get_run(run_id).data.metrics
    except MlflowException as error:
        return None, (
            f"model version {version} of {name} not readable from MLflow: {redact_text(str(error))}"
        )
    if TEST_MAE_METRIC not in metrics:
        return None, f"run {run_id} of version {version} has no {TEST_MAE_METRIC} metric"
    return float(metrics[TEST_MAE_METRIC]), f"{TEST_MAE_METRIC} of run {run_id}"


def _growth_metadata(growth: ErrorGrowth | None, note: str, version: str | None) -> dict:
    if growth is None:
        return {"forecast_error": f"not available: {note}"}
    return {
        "error_ratio": growth.error_ratio,
        "forecast_mae": growth.forecast_mae,
        "training_mae": growth.training_mae,
        "training_mae_source": note,
        "forecast_model_version": str(version),
        "forecast_hexagon_hours": growth.hexagon_hours,
        "predicted_orders": round(growth.predicted_orders, 1),
        "actual_orders": growth.actual_orders,
        "orders_outside_forecast": growth.uncovered_orders,
        "hexagons_outside_forecast": growth.uncovered_hexagons,
    }
