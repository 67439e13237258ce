"""The date sweep: everything that builds its days from "today" works on any day.

The clock is frozen (time-machine, not ticking) at each instant of
:data:`SWEEP`: month and year ends, a leap day, the DST changes of America/New_York, the midnights
of Asia/Kolkata (UTC+05:30), and instants a second either side of 00:00 UTC. What a day holds is
chosen here (file dirt included), never by the calendar. The cheap tests run on every instant;
the slow end-to-end tests use fixed days instead (``GEO_BUSYNESS_END_DATE``).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest
import time_machine

from geo_busyness.assets.ingestion import UNROUTED, build_ingestion, build_unrouted
from geo_busyness.assets.metadata import city_key, stage_selection
from geo_busyness.automation import on_new_data_latest_day
from geo_busyness.checks import build_checks
from geo_busyness.core.city import City
from geo_busyness.core.schema import read_raw_file, validate_pings
from geo_busyness.jobs import ingest_job_name
from geo_busyness.partitions import city_partitions, export_partitions, latest_complete_day
from geo_busyness.resources.io_manager import ParquetIOManagerResource, committed_path
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.sensors import build_landing_sensor
from geo_busyness.simulate import (
    FILE_DIRT_KINDS,
    SimulationConfig,
    simulate,
    simulate_cities,
    simulate_day,
)
from geo_busyness_tests.integration.test_landing_sensor import assert_mixed_export_accounted

pytestmark = pytest.mark.integration

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


# (instant, the time zone whose calendar edge it probes)
SWEEP = [
    (at("2025-01-31T23:59:59+00:00"), "UTC"),
    (at("2025-02-01T00:00:01+00:00"), "UTC"),
    (at("2025-02-28T12:00:00+00:00"), "UTC"),
    (at("2025-03-09T01:59:00-05:00"), "America/New_York"),  # a minute before DST starts
    (at("2025-03-09T03:00:00-04:00"), "America/New_York"),  # DST started
    (at("2025-03-10T00:00:00+00:00"), "America/New_York"),
    (at("2025-04-30T23:59:00+00:00"), "UTC"),
    (at("2025-06-30T23:59:00+05:30"), "Asia/Kolkata"),
    (at("2025-07-01T00:00:00+05:30"), "Asia/Kolkata"),
    (at("2025-09-30T12:00:00+00:00"), "UTC"),
    (at("2025-11-02T01:30:00-04:00"), "America/New_York"),  # first 01:30, EDT
    (at("2025-11-02T01:30:00-05:00"), "America/New_York"),  # second 01:30, EST
    (at("2025-11-03T04:00:00+00:00"), "America/New_York"),
    (at("2025-12-31T23:59:59+00:00"), "UTC"),
    (at("2026-01-01T00:00:00+00:00"), "UTC"),
    (at("2026-01-01T00:00:00+05:30"), "Asia/Kolkata"),
    (at("2026-02-28T23:00:00+00:00"), "UTC"),
    (at("2026-03-01T01:00:00+00:00"), "UTC"),
    (at("2026-03-08T02:30:00-05:00"), "America/New_York"),  # the hour that does not exist
    (at("2026-03-09T03:59:00+00:00"), "America/New_York"),
    (at("2026-04-14T23:59:59+05:30"), "Asia/Kolkata"),
    (at("2026-07-15T09:00:00+00:00"), "UTC"),
    (at("2026-11-01T01:00:00-05:00"), "America/New_York"),
    (at("2026-11-02T00:00:00+00:00"), "America/New_York"),
    (at("2026-12-01T00:00:00+00:00"), "UTC"),
    (at("2026-12-01T13:02:00+00:00"), "UTC"),  # the day the suite first failed on the clock
    (at("2026-12-31T23:59:59+05:30"), "Asia/Kolkata"),
    (at("2027-01-01T00:00:00+05:30"), "Asia/Kolkata"),
    (at("2027-12-31T23:30:00+00:00"), "UTC"),
    (at("2028-02-29T12:00:00+00:00"), "UTC"),  # a leap day
    (at("2028-03-01T00:00:00+00:00"), "UTC"),
    (at("2028-03-12T03:00:00-04:00"), "America/New_York"),
]
IDS = [f"{instant:%Y-%m-%dT%H:%M:%SZ}-{zone}" for instant, zone in SWEEP]

CITY_IN_ZONE = {
    "UTC": City(),
    "America/New_York": City(
        name="Jersey City, NJ",
        id="jersey-city",
        center_lat=40.72,
        center_lon=-74.05,
        timezone="America/New_York",
    ),
    "Asia/Kolkata": City(
        name="Bengaluru",
        id="bengaluru",
        center_lat=12.97,
        center_lon=77.59,
        timezone="Asia/Kolkata",
    ),
}
CITIES = tuple(CITY_IN_ZONE.values())
# The landing sensor of a catalog of these three cities (its days come from the clock per tick).
INGEST_JOBS = {
    **{
        city.id: dg.define_asset_job(
            ingest_job_name(city), selection=stage_selection("ingestion", city)
        )
        for city in CITIES
    },
    None: dg.define_asset_job(ingest_job_name(None), selection=dg.AssetSelection.assets(UNROUTED)),
}
landing_zone_sensor = build_landing_sensor(CITIES, INGEST_JOBS)


@pytest.fixture(params=SWEEP, ids=IDS)
def now(request: pytest.FixtureRequest):
    instant, zone = request.param
    # Not ticking: a test that starts a second before midnight must not see the day change.
    with time_machine.travel(instant, tick=False):
        yield instant, zone


def today_utc() -> dt.date:
    return dt.datetime.now(UTC).date()


def test_the_frozen_clock_moves_the_partitions(now):
    instant, _ = now
    assert today_utc() == instant.date()
    yesterday = instant.date() - dt.timedelta(days=1)
    for city in CITIES:  # UTC days whatever the city's time zone
        assert city_partitions(city).get_last_partition_key() == str(yesterday)
        assert latest_complete_day(city) == yesterday
    assert export_partitions(CITIES).get_last_partition_key() == str(yesterday)


def test_the_sensor_ingests_complete_days_and_ignores_the_day_in_progress(now, tmp_path):
    _, zone_name = now
    city = CITY_IN_ZONE[zone_name]
    today = today_utc()
    zone = LandingZone(root=str(tmp_path / "landing"))
    days = {offset: today + dt.timedelta(days=offset) for offset in (-2, -1, 0, 1)}
    for day in days.values():
        zone.write(f"raw/dt={day}/part-000.csv", b"courier_id,order_number\nc1,1\n")
        zone.write(f"raw/city={city.id}/dt={day}/part-000.csv", b"courier_id,order_number\nc1,1\n")
    with dg.build_sensor_context(
        resources={"landing_zone": zone}, instance=dg.DagsterInstance.ephemeral()
    ) as context:
        result = landing_zone_sensor(context)
    # The export of every city asks for every city's day and its unrouted rows; the city's own
    # folder for that city's day (one run per city-day, both folders read together).
    requested = sorted((request.job_name, request.partition_key) for request in result.run_requests)
    jobs = [job.name for job in INGEST_JOBS.values()]
    assert requested == sorted((job, str(days[d])) for job in jobs for d in (-2, -1))
    run_keys = {request.run_key.split(":")[0] for request in result.run_requests}
    assert f"{city.id}/{days[-1]}" in run_keys and f"{UNROUTED}/{days[-1]}" in run_keys


def test_the_latest_day_is_ingested_fresh_and_every_row_is_accounted_for(now, tmp_path):
    _, zone_name = now
    city = CITY_IN_ZONE[zone_name]
    yesterday = today_utc() - dt.timedelta(days=1)
    zone = LandingZone(root=str(tmp_path / "landing"))
    summary = simulate(
        SimulationConfig(
            city=city,
            start_date=yesterday,
            days=1,
            pings_per_day=400,
            n_couriers=20,
            n_restaurants=15,
            file_dirt=frozenset(FILE_DIRT_KINDS),
        ),
        put=zone.write,
        progress=False,
        city_folder=True,
    )
    assets = build_ingestion(city, CITIES)
    checks = [
        check
        for check in build_checks(city, "cities.yaml")
        if {key.name for key in check.check_keys}
        & {"raw_pings_are_fresh", "rows_are_conserved", "clean_pings_match_contract"}
    ]
    result = dg.materialize(
        [*assets, *checks],
        partition_key=str(yesterday),
        resources={
            "landing_zone": zone,
            "io_manager": ParquetIOManagerResource(base_path=str(tmp_path / "assets")),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "raw_pings_are_fresh": True,
        "rows_are_conserved": True,
        "clean_pings_match_contract": True,
    }
    node = f"{city.key}__validated_courier_pings"
    clean = result.output_for_node(node, "clean_courier_pings")
    quarantined = result.output_for_node(node, "quarantined_pings")
    # Source rows, a file quarantined whole counting each of its rows.
    assert len(clean) + len(quarantined) == summary.rows
    assert len(quarantined) == summary.dirty_rows
    pings = pd.to_datetime(clean["courier_location_timestamp"], utc=True)
    assert (pings.dt.date == yesterday).all()
    # The asset keys and the stored partition carry the city.
    stored = committed_path(tmp_path / "assets", [city.key, "clean_courier_pings"], str(yesterday))
    assert stored.exists() and stored.parent.name == "clean_courier_pings"
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert city_key(city, "raw_courier_pings") in materialized


def test_the_export_of_every_city_is_routed_on_any_day(now, tmp_path):
    """The zone's city's day landed as an export of every city (with strays between towns):
    every row ends once in the city's raw pings or in unrouted_pings, exactly as the simulator
    accounts for it."""
    _, zone_name = now
    city = CITY_IN_ZONE[zone_name]
    yesterday = today_utc() - dt.timedelta(days=1)
    zone = LandingZone(root=str(tmp_path / "landing"))
    summary = simulate_cities(
        [
            SimulationConfig(
                city=city,
                start_date=yesterday,
                days=1,
                pings_per_day=300,
                n_couriers=20,
                n_restaurants=15,
                file_dirt=frozenset(FILE_DIRT_KINDS),
            )
        ],
        layout="mixed",
        put=zone.write,
        stray_share=0.02,
    )
    result = dg.materialize(
        [*build_ingestion(city, CITIES), build_unrouted(CITIES)],
        partition_key=str(yesterday),
        resources={
            "landing_zone": zone,
            "io_manager": ParquetIOManagerResource(base_path=str(tmp_path / "assets")),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    node = f"{city.key}__validated_courier_pings"
    tables = {
        city.id: (
            result.output_for_node(f"{city.key}__raw_courier_pings"),
            result.output_for_node(node, "clean_courier_pings"),
            result.output_for_node(node, "quarantined_pings"),
        )
    }
    assert_mixed_export_accounted(summary, [city], tables, result.output_for_node(UNROUTED))


def test_the_simulated_day_follows_the_city_clock(now):
    """A day's demand follows local hours (23 or 25 of them on a DST change day), and every
    ping of it stays inside its UTC day."""
    _, zone_name = now
    city = CITY_IN_ZONE[zone_name]
    yesterday = today_utc() - dt.timedelta(days=1)
    config = SimulationConfig(city=city, start_date=yesterday, days=1, pings_per_day=600)
    files = simulate_day(config, yesterday)
    frames = [
        read_raw_file(name, content)
        for name, content in files.items()
        if name.startswith("part-") and content
    ]
    result = validate_pings(
        pd.concat(frames, ignore_index=True), city, partition_day=str(yesterday)
    )
    assert len(result.clean) > 0
    local = pd.to_datetime(result.clean["courier_location_timestamp"], utc=True).dt.tz_convert(
        ZoneInfo(city.timezone)
    )
    # the busiest local hours are the meal peaks, whatever the offset or DST
    busiest = local.dt.hour.value_counts().idxmax()
    assert 11 <= busiest <= 21, busiest


REGINA = CITY_IN_ZONE["UTC"]
STAND_IN_HISTORY = dg.AssetSpec(
    city_key(REGINA, "busyness_features"), partitions_def=city_partitions(REGINA)
)


@dg.asset(
    key=city_key(REGINA, "busyness_forecast"),
    partitions_def=city_partitions(REGINA),
    deps=[STAND_IN_HISTORY],
    automation_condition=on_new_data_latest_day(REGINA),
)
def forecast_stand_in() -> None: ...


def test_automation_forecasts_the_latest_day_only(now):
    yesterday = str(today_utc() - dt.timedelta(days=1))
    before = str(today_utc() - dt.timedelta(days=2))
    assets = [STAND_IN_HISTORY, forecast_stand_in]
    with dg.DagsterInstance.ephemeral() as instance:
        cursor = dg.evaluate_automation_conditions(defs=assets, instance=instance).cursor
        for day in (before, yesterday):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=STAND_IN_HISTORY.key, partition=day)
            )
        result = dg.evaluate_automation_conditions(defs=assets, instance=instance, cursor=cursor)
    assert set(result.get_requested_partitions(forecast_stand_in.key)) == {yesterday}
