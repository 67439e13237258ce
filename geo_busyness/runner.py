"""Run the asset graph end to end on a persistent local Dagster instance.

This is what ``geo-busyness demo`` does: simulate days into the landing zone, then materialize
every asset for every day in dependency order, on the same instance the UI reads
(``$DAGSTER_HOME``, by default ``<data dir>/dagster_home``), so the runs, metadata and check
results are there to look at afterwards.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from geo_busyness.checks import raw_pings_are_fresh
from geo_busyness.resources.settings import default_data_dir

INGEST_ASSETS = (
    "raw_courier_pings",
    "clean_courier_pings",
    "quarantined_pings",
    "hex_hourly_busyness",
)
RESTAURANT_ASSETS = ("restaurants", "restaurant_clusters")
FEATURE_ASSETS = ("busyness_features",)
TRAINING_GROUP = "training"


@dataclass
class DaySummary:
    day: str
    raw_rows: int = 0
    clean_rows: int = 0
    quarantined_rows: int = 0
    hexagons: int = 0
    feature_rows: int = 0


@dataclass
class RunSummary:
    days: list[DaySummary] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    restaurants: int = 0
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)
    seconds: float = 0.0


LOCAL_INSTANCE_SETTINGS = Path(__file__).with_name("dagster.local.yaml")


def prepare_instance_dir(home: Path) -> Path:
    """``home`` created, with the local run-concurrency settings unless it already has a
    ``dagster.yaml``."""
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(LOCAL_INSTANCE_SETTINGS.read_text())
    return home


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` or ``<data dir>/dagster_home``, prepared (:func:`prepare_instance_dir`)
    and exported for this process."""
    home = prepare_instance_dir(
        Path(os.environ.get("DAGSTER_HOME") or default_data_dir() / "dagster_home")
    )
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
            limit=1,
        ).records
        event = records[0].event_log_entry if records else None
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def materialize_days(
    days: list[str],
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Materialize the data assets for ``days`` (ingest each day, restaurants once, then features)."""
    started = time.perf_counter()
    assets = [*defs.assets, *defs.asset_checks]
    resources = defs.resources
    summary = RunSummary()
    # Freshness is about the newest day after the whole load, not about each day as it lands.
    freshness = dg.AssetSelection.checks(raw_pings_are_fresh)

    def run(selection: dg.AssetSelection, partition: str | None) -> None:
        result = dg.materialize(
            assets,
            selection=selection,
            partition_key=partition,
            instance=instance,
            resources=resources,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
        # execute_in_process keeps every step output in reference cycles until a full
        # collection; without this a 30-day load holds ~30 days of frames (BENCHMARKS.md).
        gc.collect()
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                failed = (
                    summary.warned_checks
                    if evaluation.severity == dg.AssetCheckSeverity.WARN
                    else summary.failed_checks
                )
                failed.append(
                    f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name} [{partition or 'all'}]"
                )

    for day in days:
        log(f"  ingest   {day}")
        run(dg.AssetSelection.assets(*INGEST_ASSETS) - freshness, day)
    log("  restaurants, clusters and freshness")
    run(dg.AssetSelection.assets(*RESTAURANT_ASSETS) | freshness, None)
    for day in days:
        log(f"  features {day}")
        run(dg.AssetSelection.assets(*FEATURE_ASSETS), day)

    for day in days:
        clean = _latest(instance, "clean_courier_pings", day)
        quarantine = _latest(instance, "quarantined_pings", day)
        for key, value in quarantine.items():
            if key.startswith("reason/"):
                reason = key.removeprefix("reason/")
                summary.quarantine_reasons[reason] = summary.quarantine_reasons.get(
                    reason, 0
                ) + int(value)
        summary.days.append(
            DaySummary(
                day=day,
                raw_rows=int(clean.get("raw_rows", 0)),
                clean_rows=int(clean.get("dagster/row_count", 0)),
                quarantined_rows=int(clean.get("quarantined_rows", 0)),
                hexagons=int(_latest(instance, "hex_hourly_busyness", day).get("hexagons", 0)),
                feature_rows=int(_latest(instance, "busyness_features", day).get("rows", 0)),
            )
        )
    summary.restaurants = int(_latest(instance, "restaurants").get("restaurants", 0))
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class TrainingSummary:
    """What one training run decided: the candidate's test metrics next to the baselines',
    each promotion gate's verdict, and the champion afterwards."""

    test_mae: dict[str, float] = field(default_factory=dict)
    gates: dict[str, tuple[bool, str]] = field(default_factory=dict)
    promoted: bool = False
    champion_version: str | None = None
    mlflow_run_id: str | None = None
    training_seconds: float | None = None
    poc_training_seconds: float | None = None
    error: str | None = None
    seconds: float = 0.0


def train_and_promote(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> TrainingSummary:
    """One run of the training group: training_set → busyness_model → model_evaluation →
    [blocking checks] → champion_model. A refused candidate is a normal outcome here (the
    summary says why and the champion stays); any other failure is reported in ``error``."""
    started = time.perf_counter()
    log("  training set, candidate model, evaluation, checks, champion")
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.groups(TRAINING_GROUP),
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        run_config={
            **(run_config or {}),
            # A refused candidate logs its failed check at ERROR; the summary reports it.
            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        },
    )
    gc.collect()
    summary = TrainingSummary()
    for evaluation in result.get_asset_check_evaluations():
        verdict = evaluation.metadata.get("verdict")
        summary.gates[evaluation.check_name] = (
            evaluation.passed,
            str(verdict.value) if verdict else "",
        )
    materialized = {
        event.asset_key.to_user_string() for event in result.get_asset_materialization_events()
    }
    evaluation = _latest(instance, "model_evaluation") if "model_evaluation" in materialized else {}
    summary.test_mae = {
        name: float(evaluation[key])
        for name, key in (
            ("model", "model_mae"),
            ("seasonal naive", "seasonal_naive_mae"),
            ("PoC random forest", "poc_mae"),
            ("champion before", "champion_mae"),
        )
        if key in evaluation
    }
    model = _latest(instance, "busyness_model") if "busyness_model" in materialized else {}
    summary.mlflow_run_id = model.get("mlflow_run_id")
    summary.training_seconds = model.get("training_seconds")
    summary.poc_training_seconds = model.get("poc_training_seconds")
    champion = _latest(instance, "champion_model")
    summary.promoted = "champion_model" in materialized and bool(champion.get("changed"))
    summary.champion_version = champion.get("version")
    failures = _step_failures(result)
    if failures and not any(not passed for passed, _ in summary.gates.values()):
        summary.error = "; ".join(failures)
    summary.seconds = time.perf_counter() - started
    return summary


def _step_failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """``step: message`` per failed step, with the innermost error rather than Dagster's
    wrapping 'Error occurred while executing'."""
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            message = error.message.strip() if error is not None else "unknown error"
            failures.append(f"{event.step_key}: {message}")
    return failures


def format_training_summary(summary: TrainingSummary) -> str:
    if summary.error and not summary.test_mae:
        return f"training failed: {summary.error}"
    lines = ["test MAE (orders per hexagon-hour):"]
    naive = summary.test_mae.get("seasonal naive")
    for name, mae in summary.test_mae.items():
        relative = (
            f"  ({1 - mae / naive:+.1%} vs seasonal naive)"
            if naive and name != "seasonal naive"
            else ""
        )
        lines.append(f"  {name:<18} {mae:.4f}{relative}")
    if summary.training_seconds is not None:
        poc = (
            f", PoC grid search {summary.poc_training_seconds:.1f} s"
            if summary.poc_training_seconds is not None
            else ""
        )
        lines.append(f"training: XGBoost {summary.training_seconds:.1f} s{poc}")
    lines.append("promotion gates:")
    for name, (passed, verdict) in summary.gates.items():
        lines.append(f"  {'PASS' if passed else 'FAIL'} {name}: {verdict}")
    if summary.promoted:
        lines.append(f"champion: version {summary.champion_version} (promoted in this run)")
    else:
        current = f"version {summary.champion_version}" if summary.champion_version else "none"
        lines.append(f"champion: unchanged ({current}); the candidate was not promoted")
    if summary.error:
        lines.append(f"errors: {summary.error}")
    lines.append(f"MLflow run: {summary.mlflow_run_id}  ({summary.seconds:.0f} s)")
    return "\n".join(lines)


def forecast_next_day(
    day: str, defs: dg.Definitions, instance: dg.DagsterInstance, log: Callable[[str], None] = print
) -> dict:
    """Materialize ``busyness_forecast[day]`` (the day after ``day``); its metadata."""
    log(f"  forecast of the day after {day}")
    dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets("busyness_forecast"),
        partition_key=day,
        instance=instance,
        resources=defs.resources,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    gc.collect()
    return _latest(instance, "busyness_forecast", day)


def deploy_endpoint(
    defs: dg.Definitions, instance: dg.DagsterInstance, log: Callable[[str], None] = print
) -> tuple[dict, str | None]:
    """Materialize ``endpoint_deployment`` and its smoke check; its metadata and, if the run
    failed, why (the previous model, if any, keeps serving)."""
    log("  endpoint deployment and smoke check")
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets("endpoint_deployment"),
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    gc.collect()
    failures = _step_failures(result)
    metadata = _latest(instance, "endpoint_deployment") if result.success else {}
    return metadata, "; ".join(failures) or None


def day_range(start: dt.date, days: int) -> list[str]:
    return [(start + dt.timedelta(days=offset)).isoformat() for offset in range(days)]


def format_summary(summary: RunSummary) -> str:
    table = pd.DataFrame([vars(day) for day in summary.days])
    totals = table.drop(columns="day").sum()
    reasons = (
        ", ".join(f"{k}={v}" for k, v in sorted(summary.quarantine_reasons.items()) if v) or "none"
    )
    lines = [
        table.to_string(index=False),
        "",
        f"{len(table)} days: {totals['raw_rows']:,} raw rows = {totals['clean_rows']:,} clean "
        f"+ {totals['quarantined_rows']:,} quarantined; {summary.restaurants} restaurants; "
        f"{totals['feature_rows']:,} feature rows ({summary.seconds:.0f} s)",
        f"quarantine reasons: {reasons}",
        "failed checks: " + (", ".join(summary.failed_checks) or "none"),
        "warnings: " + (", ".join(summary.warned_checks) or "none"),
    ]
    return "\n".join(lines)
