"""Sensors: the landing zone starts ingestion for every day whose files changed."""

import datetime as dt
from dataclasses import replace

import dagster as dg

from geo_busyness.assets.ingestion import raw_courier_pings, validated_courier_pings
from geo_busyness.core.landing import DayRun, DayWindow, LandingPlan, plan_landing_runs
from geo_busyness.partitions import daily_partitions, latest_complete_day
from geo_busyness.resources.landing_zone import RAW_PREFIX, LandingZone, day_of_key, day_prefix
from geo_busyness.resources.settings import sensor_interval_seconds

# Cleaning up or fixing the layout of a large batch should not flood the tick log.
MAX_LOGGED_IGNORED_KEYS = 20


def partition_window() -> DayWindow:
    """Days of ``daily_partitions`` as of now; before the first day ends, none is complete."""
    first = daily_partitions.start.date()
    last = latest_complete_day() or first - dt.timedelta(days=1)
    return DayWindow(first=first, last=last)


def _not_yet_ingested(
    instance: dg.DagsterInstance, runs: tuple[DayRun, ...], listing
) -> tuple[DayRun, ...]:
    """Drop days new to the cursor whose ingestion already ran after their newest file landed:
    a first tick over a loaded landing zone would otherwise re-ingest all of its history."""
    newest: dict[str, float] = {}
    for item in listing:
        day = day_of_key(item.key)
        if day is not None:
            newest[day] = max(newest.get(day, 0.0), item.modified.timestamp())
    kept = []
    for run in runs:
        if run.is_new_day and run.day in newest:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=raw_courier_pings.key, asset_partitions=[run.day]),
                limit=1,
            ).records
            if records and records[0].timestamp > newest[run.day]:
                continue
        kept.append(run)
    return tuple(kept)


def _log_findings(log, plan: LandingPlan, landing_zone: LandingZone) -> None:
    if plan.cursor_problem:
        log.warning(
            f"Landing cursor discarded ({plan.cursor_problem}): every day is requested again; "
            "Dagster skips those whose run key (day:digest) already ran."
        )
    shown = plan.newly_ignored[:MAX_LOGGED_IGNORED_KEYS]
    for item in shown:
        log.warning(f"Ignoring {landing_zone.location(item.key)}: {item.reason}")
    if len(plan.newly_ignored) > len(shown):
        log.warning(f"... and {len(plan.newly_ignored) - len(shown)} more newly ignored key(s)")
    for day in plan.emptied_days:
        log.warning(
            f"No ingestible file left under {landing_zone.location(day_prefix(day))}: "
            f"no run requested, partition {day} keeps its last materialization"
        )


@dg.sensor(
    target=[raw_courier_pings, validated_courier_pings],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(),
    description=(
        "Lists the landing zone's `raw/` each tick and ingests (raw, clean and quarantined pings) "
        "every complete day whose files were added, overwritten or deleted since the last tick, "
        "once per version of the day."
    ),
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, landing_zone: LandingZone
) -> dg.SensorResult:
    listing = landing_zone.list_files(RAW_PREFIX + "/")
    plan = plan_landing_runs(listing, context.cursor, partition_window())
    _log_findings(context.log, plan, landing_zone)
    runs = _not_yet_ingested(context.instance, plan.runs, listing)
    if len(runs) < len(plan.runs):
        context.log.info(
            f"{len(plan.runs) - len(runs)} day(s) new to the cursor were already ingested after "
            "their newest file landed (e.g. by the demo, or before a cursor reset): not re-run"
        )
    plan = replace(plan, runs=runs)
    if not plan.runs:
        return dg.SensorResult(
            skip_reason=f"No landing day changed under {landing_zone.location(RAW_PREFIX)}: "
            f"{plan.summary()}",
            cursor=plan.cursor,
        )
    new_days = sum(run.is_new_day for run in plan.runs)
    context.log.info(
        f"Ingesting {len(plan.runs)} day(s) ({new_days} new, {len(plan.runs) - new_days} with "
        f"changed files); {plan.summary()}"
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=run.day, run_key=run.run_key) for run in plan.runs
        ],
        cursor=plan.cursor,
    )
