"""Sensors: the landing zone starts ingestion for every city-day whose files changed."""

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from geo_busyness.assets.deployment import ENDPOINT_KEY
from geo_busyness.assets.ingestion import UNROUTED
from geo_busyness.assets.metadata import city_key
from geo_busyness.core.city import City, key_of_city_id
from geo_busyness.core.landing import (
    DayWindow,
    LandingPlan,
    city_day_digest,
    landing_slot,
    plan_landing_runs,
)
from geo_busyness.core.redact import redact_data, redact_text
from geo_busyness.partitions import (
    city_partitions,
    day_range_problem,
    export_partitions,
    first_day,
    latest_complete_day,
)
from geo_busyness.resources.deployment import EndpointTarget
from geo_busyness.resources.landing_zone import (
    RAW_PREFIX,
    LandingZone,
    city_day_of_key,
    day_prefix,
)
from geo_busyness.resources.settings import sensor_interval_seconds
from geo_busyness.serving.bundle import city_label

# Cleaning up or fixing the layout of a large batch should not flood the tick log.
MAX_LOGGED_IGNORED_KEYS = 20


def partition_window(cities: Sequence[City]) -> DayWindow:
    """Days of any city as of now; before the first day ends, none is complete."""
    first = export_partitions(cities).start.date()
    last = latest_complete_day(cities[0]) or first - dt.timedelta(days=1)
    return DayWindow(first=first, last=last)


@dataclass(frozen=True)
class IngestRun:
    """One run the landing asks for: a city's day, or the unrouted rows of an export's day."""

    city: City | None
    day: str
    digest: str

    @property
    def run_key(self) -> str:
        return f"{landing_slot(self.city.id if self.city else UNROUTED, self.day)}:{self.digest}"


def ingest_runs(plan: LandingPlan, cities: Sequence[City]) -> tuple[list[IngestRun], list[str]]:
    """The runs for the changed slots of ``plan`` and a note per city-day outside its city's
    days: a city's folder changes its day; an export of every city changes that day of every
    city it may hold and its unrouted rows."""
    by_id = {city.id: city for city in cities}
    wanted: dict[tuple[str | None, str], None] = {}
    for run in plan.runs:
        targets = [run.city] if run.city else [*by_id, None]
        for city in targets:
            wanted[(city, run.day)] = None
    runs, outside = [], []
    for city_id, day in wanted:
        if city_id is None:
            runs.append(IngestRun(None, day, plan.digests[day]))
            continue
        city = by_id[city_id]
        if not city_partitions(city).has_partition_key(day):
            if day < first_day(city).isoformat():
                outside.append(day_range_problem(city, day))
            continue
        runs.append(IngestRun(city, day, city_day_digest(plan, city_id, day)))
    return runs, outside


def _not_yet_ingested(
    instance: dg.DagsterInstance, runs: list[IngestRun], listing, previous_slots
) -> list[IngestRun]:
    """Drop city-days new to the cursor whose ingestion already ran, and succeeded, after their
    newest file landed: a first tick over a loaded landing zone would otherwise re-ingest all of
    history. A run that died or failed after writing the raw pings still counts as not ingested:
    its later steps (the clean and quarantined pings) never ran."""
    newest: dict[tuple[str | None, str], float] = {}
    for item in listing:
        found = city_day_of_key(item.key)
        if found is not None:
            newest[found] = max(newest.get(found, 0.0), item.modified.timestamp())
    kept = []
    for run in runs:
        city_id = run.city.id if run.city else None
        slots = {landing_slot(city_id, run.day), run.day}
        if slots & previous_slots:
            kept.append(run)
            continue
        landed = max(newest.get((city_id, run.day), 0.0), newest.get((None, run.day), 0.0))
        key = city_key(run.city, "raw_courier_pings") if run.city else dg.AssetKey(UNROUTED)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[run.day]), limit=1
        ).records
        if not (records and records[0].timestamp > landed and _succeeded(instance, records[0])):
            kept.append(run)
    return kept


def _succeeded(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> bool:
    run = instance.get_run_by_id(record.run_id)
    return run is not None and run.status == dg.DagsterRunStatus.SUCCESS


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
    for slot in plan.emptied_days:
        city, _, day = slot.rpartition("/")
        log.warning(
            f"No ingestible file left under {landing_zone.location(day_prefix(day, city or None))}: "
            f"no run requested, partition {day} keeps its last materialization"
        )


def build_landing_sensor(
    cities: Sequence[City], jobs: dict[str | None, Any]
) -> dg.SensorDefinition:
    """The landing sensor over every catalogued city; ``jobs``: the ingestion job per city id
    (None: the unrouted rows of exports of every city)."""

    @dg.sensor(
        name="landing_zone_sensor",
        jobs=list(jobs.values()),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval_seconds(),
        description=(
            "Lists the landing zone's `raw/` each tick and ingests (raw, clean and quarantined "
            "pings) every complete city-day whose files were added, overwritten or deleted "
            "since the last tick, once per version: `raw/city=<id>/dt=D/` for that city, "
            "`raw/dt=D/` (an export of every city) for every city and its unrouted rows."
        ),
    )
    def landing_zone_sensor(
        context: dg.SensorEvaluationContext, landing_zone: LandingZone
    ) -> dg.SensorResult:
        listing = landing_zone.list_files(RAW_PREFIX + "/")
        plan = plan_landing_runs(
            listing, context.cursor, partition_window(cities), {c.id for c in cities}
        )
        _log_findings(context.log, plan, landing_zone)
        runs, outside = ingest_runs(plan, cities)
        for note in outside:
            context.log.warning(f"Not ingesting: {note}")
        previous = set(_previous_slots(context.cursor))
        kept = _not_yet_ingested(context.instance, runs, listing, previous)
        if len(kept) < len(runs):
            context.log.info(
                f"{len(runs) - len(kept)} city-day(s) new to the cursor were already ingested "
                "after their newest file landed (e.g. by the demo, or before a cursor reset)"
            )
        if not kept:
            return dg.SensorResult(
                skip_reason=f"No landing day changed under "
                f"{landing_zone.location(RAW_PREFIX)}: {plan.summary()}",
                cursor=plan.cursor,
            )
        context.log.info(f"Ingesting {len(kept)} city-day(s); {plan.summary()}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    job_name=jobs[run.city.id if run.city else None].name,
                    partition_key=run.day,
                    run_key=run.run_key,
                )
                for run in kept
            ],
            cursor=plan.cursor,
        )

    return landing_zone_sensor


def _previous_slots(cursor: str | None) -> list[str]:
    """Slots the previous cursor knew (none when it cannot be read)."""
    try:
        return list(json.loads(cursor)["days"]) if cursor else []
    except (ValueError, KeyError, TypeError):
        return []


def _champion_label(instance: dg.DagsterInstance, deployed: dict) -> str | None:
    """The version label the endpoint should serve: the champion of its only city, or
    ``city=version,…`` (the bundle's label) for several; None when a champion is unknown."""
    cities = deployed.get("cities")
    if cities is None or not isinstance(cities.value, dict) or not cities.value:
        return None
    versions = {}
    for city_id in cities.value:
        event = instance.get_latest_materialization_event(
            dg.AssetKey([key_of_city_id(city_id), "champion_model"])
        )
        version = event.asset_materialization.metadata.get("version") if event else None
        if version is None:
            return None
        versions[city_id] = str(version.value)
    return city_label(versions) if len(versions) > 1 else next(iter(versions.values()))


@dg.sensor(
    name="endpoint_health_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(),
    description=(
        "Asks the deployment target what serves now and records an observation of "
        "`endpoint_deployment` whenever that changes: down, another model version, a problem, "
        "or a restart by the local endpoint's supervisor (whose restarts it counts)."
    ),
)
def endpoint_health_sensor(
    context: dg.SensorEvaluationContext, endpoint: EndpointTarget
) -> dg.SensorResult | dg.SkipReason:
    deployed = context.instance.get_latest_materialization_event(ENDPOINT_KEY)
    if deployed is None:
        return dg.SkipReason("nothing deployed yet: endpoint_deployment was never materialized")
    try:
        health = redact_data(endpoint.health())
    except Exception as error:  # an unreachable control plane is itself the news
        health = {"serving": False, "problems": [redact_text(f"health unknown: {error}")]}
    champion = _champion_label(context.instance, deployed.asset_materialization.metadata)
    if health["serving"] and champion and health.get("model_version") != champion:
        health["problems"] = [
            *health.get("problems", []),
            f"serves model version {health.get('model_version')}, the champion is {champion}",
        ]
    cursor = json.dumps(health, sort_keys=True, default=str)
    summary = "serving" if health["serving"] else "NOT serving"
    summary += f" model version {health.get('model_version')}"
    if health.get("problems"):
        summary += f"; {'; '.join(health['problems'])}"
    if cursor == context.cursor:
        return dg.SkipReason(f"unchanged: {summary}")
    (context.log.info if health["serving"] and not health.get("problems") else context.log.warning)(
        f"endpoint health changed: {summary}"
    )
    metadata: dict[str, Any] = {
        "serving": health["serving"],
        "model_version": str(health.get("model_version")),
        "problems": dg.MetadataValue.json(health.get("problems", [])),
        "health": dg.MetadataValue.json(health),
    }
    if "restarts_since_deploy" in health:
        metadata["restarts_since_deploy"] = health["restarts_since_deploy"]
    return dg.SensorResult(
        asset_events=[
            dg.AssetObservation(asset_key=ENDPOINT_KEY, description=summary, metadata=metadata)
        ],
        cursor=cursor,
    )
