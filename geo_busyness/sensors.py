"""Sensors: the landing zone starts ingestion for every day whose files changed."""

import datetime as dt

import dagster as dg

from geo_busyness.assets.ingestion import raw_courier_pings, validated_courier_pings
from geo_busyness.core.landing import DayWindow, LandingPlan, plan_landing_runs
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.landing_zone import RAW_PREFIX, LandingZone, day_prefix

# Cleaning up or fixing the layout of a large batch should not flood the tick log.
MAX_LOGGED_IGNORED_KEYS = 20


def partition_window() -> DayWindow:
    """Days of ``daily_partitions`` as of now; before the first day ends, none is complete."""
    first = daily_partitions.start.date()
    last_key = daily_partitions.get_last_partition_key()
    last = dt.date.fromisoformat(last_key) if last_key else first - dt.timedelta(days=1)
    return DayWindow(first=first, last=last)


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
    minimum_interval_seconds=30,
    description=(
        "Lists the landing zone's `raw/` each tick and ingests (raw, clean and quarantined pings) "
        "every complete day whose files were added, overwritten or deleted since the last tick, "
        "once per version of the day."
    ),
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, landing_zone: LandingZone
) -> dg.SensorResult:
    plan = plan_landing_runs(
        landing_zone.list_files(RAW_PREFIX + "/"), context.cursor, partition_window()
    )
    _log_findings(context.log, plan, landing_zone)
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
