"""The landing-zone sensor on a local directory and on a real S3 server (SeaweedFS on loopback).

Each tick gets a fresh sensor context carrying only the cursor string the previous tick
returned, as after a daemon restart: no file may be skipped and no day version run twice.
A city's folder (``raw/city=<id>/dt=D/``) requests that city's day; an export of every city
(``raw/dt=D/``) requests the day of every city and its ``unrouted_pings``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster_aws.s3 import S3Resource

from geo_busyness.core.catalog import Catalog, load_catalog, load_configured_catalog
from geo_busyness.core.city import DEFAULT_CITY, City
from geo_busyness.definitions import build_definitions
from geo_busyness.partitions import latest_complete_day
from geo_busyness.resources.io_manager import committed_path
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.resources.settings import LANDING_ZONE_ENV, STORAGE_ENV
from geo_busyness.simulate import (
    FILE_DIRT_KINDS,
    MULTI_CITIES,
    SimulationConfig,
    multi_city_configs,
    simulate,
    simulate_cities,
)
from geo_busyness_tests.integration.conftest import S3Bucket

pytestmark = pytest.mark.integration

REGINA = DEFAULT_CITY
INGESTION_NAMES = ("raw_courier_pings", "clean_courier_pings", "quarantined_pings")
INGESTION_KEYS = {dg.AssetKey([REGINA.key, name]) for name in INGESTION_NAMES}
INGESTION_CHECKS = {
    "raw_pings_are_fresh",
    "clean_pings_match_contract",
    "rows_are_conserved",
    "quarantine_share_is_low",
}
REGINA_JOB, UNROUTED_JOB = "regina__ingest", "unrouted_pings__ingest"
OLD_DAY, DAY_1, DAY_2, DAY_3 = "2025-01-02", "2025-02-01", "2025-02-02", "2025-02-03"
CSV = b"courier_id,order_number\nc1,1\n"
LAYOUTS = {
    # layout: (folder of a day's files, the jobs a change of the day requests)
    "city": ("raw/city=regina", (REGINA_JOB,)),
    "export": ("raw", (REGINA_JOB, UNROUTED_JOB)),
}


def file_key(day: str, name: str, folder: str = "raw") -> str:
    return f"{folder}/dt={day}/{name}"


def catalog_entry(city: City) -> dict:
    entry = {
        "id": city.id,
        "name": city.name,
        "center": [city.center_lat, city.center_lon],
        "service_radius_km": city.service_radius_km,
        "implausible_distance_km": city.implausible_distance_km,
        "timezone": city.timezone,
        "h3_resolution": city.h3_resolution,
        "restaurant_clusters": city.n_restaurant_clusters,
    }
    if city.first_day:
        entry["first_day"] = city.first_day.isoformat()
    return entry


def write_catalog(path: Path, cities: Sequence[City]) -> Catalog:
    """A catalog file of ``cities`` (no service_area polygons), loaded back."""
    path.write_text(yaml.safe_dump({"cities": [catalog_entry(city) for city in cities]}))
    catalog = load_catalog(path)
    assert catalog.cities == tuple(cities)
    return catalog


@pytest.fixture(scope="module")
def single_city_defs() -> dg.Definitions:
    return build_definitions(load_configured_catalog())


@pytest.fixture(scope="module")
def multi_city_defs(tmp_path_factory: pytest.TempPathFactory) -> dg.Definitions:
    catalog = write_catalog(tmp_path_factory.mktemp("catalog") / "cities.yaml", MULTI_CITIES)
    return build_definitions(catalog)


@pytest.fixture(params=["local", "s3"])
def landing_zone(request: pytest.FixtureRequest, tmp_path: Path) -> LandingZone:
    if request.param == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_env")
        return LandingZone(
            root=bucket.url("landing"), s3=S3Resource(endpoint_url=bucket.endpoint_url)
        )
    return LandingZone(root=str(tmp_path / "landing"))


def delete(zone: LandingZone, key: str) -> None:
    if zone.is_s3:
        bucket, _, prefix = zone.root.removeprefix("s3://").partition("/")
        zone.s3.get_client().delete_object(Bucket=bucket, Key=f"{prefix}/{key}")
    else:
        (Path(zone.root) / key).unlink()


class Ticks:
    """Evaluates the sensor like the daemon: a new context per tick, only the cursor carried."""

    def __init__(self, zone: LandingZone, defs: dg.Definitions):
        self.zone = zone
        self.sensor = defs.get_sensor_def("landing_zone_sensor")
        # an instance without materializations: no day counts as already ingested
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None
        self.run_keys: list[str] = []
        self.logged: list[str] = []
        self.last: dg.SensorResult | None = None

    def evaluate(self, cursor: str | None) -> dg.SensorResult:
        handler = _Collect(self.logged)
        with dg.build_sensor_context(
            cursor=cursor, resources={"landing_zone": self.zone}, instance=self.instance
        ) as ctx:
            ctx.log.addHandler(handler)
            return self.sensor(ctx)

    def run(self) -> list[tuple[str, str]]:
        """One tick; the (job, day) it requested."""
        self.last = self.evaluate(self.cursor)
        self.cursor = self.last.cursor
        self.run_keys += [request.run_key for request in self.last.run_requests]
        return [(request.job_name, request.partition_key) for request in self.last.run_requests]


def requested(jobs: Sequence[str], *days: str) -> list[tuple[str, str]]:
    return [(job, day) for day in days for job in jobs]


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_day_version_is_requested_once_across_restarts(
    landing_zone: LandingZone, single_city_defs: dg.Definitions, layout: str
):
    folder, jobs = LAYOUTS[layout]

    def key(day: str, name: str) -> str:
        return file_key(day, name, folder)

    ticks = Ticks(landing_zone, single_city_defs)
    assert ticks.run() == []
    assert "0 file(s) in 0 day(s)" in ticks.last.skip_reason.skip_message

    for name in (
        key(DAY_1, "a.csv"),
        key(DAY_1, "b.parquet"),
        key(DAY_2, "a.csv"),
        key(DAY_3, "a.csv"),
        key(DAY_3, "b.csv"),
    ):
        landing_zone.write(name, CSV)
    assert ticks.run() == requested(jobs, DAY_1, DAY_2, DAY_3)
    assert ticks.run() == []
    assert "5 file(s) in 3 day(s)" in ticks.last.skip_reason.skip_message

    # A file landing in the same second as one already seen (`since_last_modified` misses it):
    # forced locally; on S3 the upload right after the tick mostly shares its second too.
    landing_zone.write(key(DAY_1, "c.csv"), CSV)
    if not landing_zone.is_s3:
        seen = (Path(landing_zone.root) / key(DAY_1, "a.csv")).stat().st_mtime_ns
        os.utime(Path(landing_zone.root) / key(DAY_1, "c.csv"), ns=(seen, seen))
    assert ticks.run() == requested(jobs, DAY_1)

    landing_zone.write(key(DAY_2, "a.csv"), CSV + b"c2,2\n")
    assert ticks.run() == requested(jobs, DAY_2)

    # The last key of the listing, what `since_key` would point at.
    delete(landing_zone, key(DAY_3, "b.csv"))
    assert ticks.run() == requested(jobs, DAY_3)

    for name in ("a.csv", "b.parquet", "c.csv"):
        delete(landing_zone, key(DAY_1, name))
    assert ticks.run() == []
    assert any(f"partition {DAY_1} keeps its last materialization" in m for m in ticks.logged)

    cursor_before = ticks.cursor
    landing_zone.write(key(OLD_DAY, "late.csv"), CSV)
    assert ticks.run() == requested(jobs, OLD_DAY)

    # Had the daemon lost that cursor update, the same run key comes back: Dagster skips it.
    replay = ticks.evaluate(cursor_before)
    assert [r.run_key for r in replay.run_requests] == [r.run_key for r in ticks.last.run_requests]

    assert len(ticks.run_keys) == len(set(ticks.run_keys)) == 7 * len(jobs)
    # Run keys name the city (or unrouted_pings) and the day: `<city id>/<day>:<digest>`.
    slots = {
        f"{target}/{day}"
        for target in ("regina", "unrouted_pings")[: len(jobs)]
        for day in (OLD_DAY, DAY_1, DAY_2, DAY_3)
    }
    assert all(key.split(":")[0] in slots for key in ticks.run_keys)


def test_ignored_keys_are_logged_once(landing_zone: LandingZone, single_city_defs: dg.Definitions):
    landing_zone.write(file_key(DAY_1, "a.csv", "raw/city=regina"), CSV)
    landing_zone.write(file_key(DAY_1, "notes.txt", "raw/city=regina"), b"not pings")
    landing_zone.write("raw/2025-02-01.csv", CSV)
    landing_zone.write(file_key(DAY_1, "a.csv", "raw/city=paris"), CSV)
    ticks = Ticks(landing_zone, single_city_defs)
    assert ticks.run() == [(REGINA_JOB, DAY_1)]
    assert ticks.run() == []
    ignored = [m for m in ticks.logged if m.startswith("Ignoring")]
    assert ignored == [
        f"Ignoring {landing_zone.location('raw/2025-02-01.csv')}: "
        "not in a raw/dt=YYYY-MM-DD/ or raw/city=<id>/dt=YYYY-MM-DD/ folder",
        f"Ignoring {landing_zone.location(file_key(DAY_1, 'a.csv', 'raw/city=paris'))}: "
        "city=paris is not a city of the catalog (known: regina)",
        f"Ignoring {landing_zone.location(file_key(DAY_1, 'notes.txt', 'raw/city=regina'))}: "
        "extension '.txt' is not one of .csv, .tsv, .parquet (any letter case, optionally "
        "compressed: .gz, .gzip, .zip, .bz2, .xz)",
    ]
    assert "3 key(s) ignored" in ticks.last.skip_reason.skip_message


def test_unreadable_cursor_is_reported_and_requests_the_same_runs(
    tmp_path: Path, single_city_defs: dg.Definitions
):
    zone = LandingZone(root=str(tmp_path / "landing"))
    zone.write(file_key(DAY_1, "a.csv"), CSV)
    ticks = Ticks(zone, single_city_defs)
    ticks.run()
    ticks.cursor = "1738368000"  # e.g. a since_last_modified timestamp of another sensor
    ticks.run()
    assert len(ticks.run_keys) == 4  # regina and unrouted_pings, twice
    assert ticks.run_keys[:2] == ticks.run_keys[2:]
    assert any(m.startswith("Landing cursor discarded (a JSON int") for m in ticks.logged)


# --- several cities ------------------------------------------------------------------------

ALL_CITY_JOBS = (*(f"{city.key}__ingest" for city in MULTI_CITIES), UNROUTED_JOB)


def test_export_of_every_city_requests_every_city_and_unrouted_pings(
    tmp_path: Path, multi_city_defs: dg.Definitions
):
    zone = LandingZone(root=str(tmp_path / "landing"))
    ticks = Ticks(zone, multi_city_defs)
    zone.write(file_key(DAY_1, "export.csv"), CSV)
    assert ticks.run() == requested(ALL_CITY_JOBS, DAY_1)
    first_keys = [request.run_key for request in ticks.last.run_requests]
    assert [key.split(":")[0] for key in first_keys] == [
        f"regina/{DAY_1}",
        f"new-york/{DAY_1}",
        f"kolkata/{DAY_1}",
        f"unrouted_pings/{DAY_1}",
    ]
    assert ticks.run() == []

    # Another file of the export: every city's reading of the day changed, with new run keys.
    zone.write(file_key(DAY_1, "export-2.csv"), CSV)
    assert ticks.run() == requested(ALL_CITY_JOBS, DAY_1)
    assert set(ticks.run_keys[4:]).isdisjoint(first_keys)
    assert len(set(ticks.run_keys)) == 8


def test_city_folder_change_requests_only_that_city(
    tmp_path: Path, multi_city_defs: dg.Definitions
):
    zone = LandingZone(root=str(tmp_path / "landing"))
    ticks = Ticks(zone, multi_city_defs)
    zone.write(file_key(DAY_1, "export.csv"), CSV)
    zone.write(file_key(DAY_1, "a.csv", "raw/city=new-york"), CSV)
    zone.write(file_key(DAY_2, "a.csv", "raw/city=kolkata"), CSV)
    assert ticks.run() == [
        *requested(ALL_CITY_JOBS, DAY_1),
        ("kolkata__ingest", DAY_2),
    ]
    new_york_before = next(key for key in ticks.run_keys if key.startswith(f"new-york/{DAY_1}"))

    zone.write(file_key(DAY_1, "b.csv", "raw/city=new-york"), CSV)
    assert ticks.run() == [("new_york__ingest", DAY_1)]
    [request] = ticks.last.run_requests
    assert request.run_key.startswith(f"new-york/{DAY_1}:")
    assert request.run_key != new_york_before

    zone.write(file_key(DAY_2, "a.csv", "raw/city=kolkata"), CSV + b"c2,2\n")
    assert ticks.run() == [("kolkata__ingest", DAY_2)]
    zone.write(file_key(DAY_2, "a.csv", "raw/city=paris"), CSV)
    assert ticks.run() == []
    assert any(
        m.startswith("Ignoring") and "city=paris is not a city of the catalog" in m
        for m in ticks.logged
    )


def test_a_day_before_a_city_first_day_is_not_requested_for_it(tmp_path: Path):
    late = dataclasses.replace(MULTI_CITIES[2], first_day=dt.date.fromisoformat(DAY_2))
    catalog = write_catalog(tmp_path / "cities.yaml", (*MULTI_CITIES[:2], late))
    zone = LandingZone(root=str(tmp_path / "landing"))
    ticks = Ticks(zone, build_definitions(catalog))
    zone.write(file_key(DAY_1, "export.csv"), CSV)
    jobs_but_kolkata = tuple(job for job in ALL_CITY_JOBS if job != "kolkata__ingest")
    assert ticks.run() == requested(jobs_but_kolkata, DAY_1)
    # The warning names the city, the day, its first day and the catalog field to change.
    assert any(
        m.startswith("Not ingesting")
        and all(part in m for part in ("kolkata", DAY_1, DAY_2, "first_day", "catalog"))
        for m in ticks.logged
    ), ticks.logged
    zone.write(file_key(DAY_2, "export.csv"), CSV)
    assert ticks.run() == requested(ALL_CITY_JOBS, DAY_2)


# --- requested runs ingest -------------------------------------------------------------------

HEADER = (
    b"courier_id,order_number,courier_location_timestamp,courier_lat,courier_lon,"
    b"order_created_timestamp,restaurant_lat,restaurant_lon\n"
)


def valid_csv(day: str, rows: int = 3) -> bytes:
    """Pings in Regina's centre, valid on ``day``."""
    return HEADER + b"".join(
        f"c{i},{i},{day}T18:04:05Z,50.4452,-104.6189,{day}T17:55:00Z,50.4460,-104.6170\n".encode()
        for i in range(rows)
    )


def storage_defs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, catalog: Catalog | None = None):
    """Definitions whose landing zone and asset storage are in ``tmp_path``."""
    monkeypatch.setenv(LANDING_ZONE_ENV, str(tmp_path / "landing"))
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "assets"))
    return build_definitions(catalog or load_configured_catalog())


def execute(defs: dg.Definitions, request: dg.RunRequest, instance: dg.DagsterInstance):
    result = defs.resolve_job_def(request.job_name).execute_in_process(
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        instance=instance,
        raise_on_error=False,
    )
    failures = [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert result.success, f"{request.job_name} [{request.partition_key}] failed: {failures}"
    return result


def test_requested_run_ingests_the_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    day = latest_complete_day(REGINA).isoformat()
    zone = LandingZone(root=str(tmp_path / "landing"))
    simulate(
        # enough pings that the 100-row legacy file stays under the quarantine share limit
        SimulationConfig(start_date=dt.date.fromisoformat(day), days=1, pings_per_day=2000),
        put=zone.write,
        progress=False,
        city_folder=True,
    )
    defs = storage_defs(monkeypatch, tmp_path)
    sensor = defs.get_sensor_def("landing_zone_sensor")
    with dg.build_sensor_context(
        definitions=defs, resources={"landing_zone": zone}, instance=dg.DagsterInstance.ephemeral()
    ) as context:
        [request] = sensor.evaluate_tick(context).run_requests

    assert (request.partition_key, request.tags["dagster/partition"]) == (day, day)
    assert request.job_name == REGINA_JOB
    assert request.run_key.startswith(f"regina/{day}:")
    result = execute(defs, request, dg.DagsterInstance.ephemeral())
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == INGESTION_KEYS
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_check_key.name for e in evaluations} == INGESTION_CHECKS
    assert all(e.passed for e in evaluations)
    assert committed_path(tmp_path / "assets", ["regina", "clean_courier_pings"], day).exists()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_days_already_ingested_are_not_rerun_on_a_first_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
):
    """A landing zone loaded before the sensor ran (e.g. by the demo) is not re-ingested; a
    file that changes afterwards is."""
    folder, jobs = LAYOUTS[layout]
    day = latest_complete_day(REGINA).isoformat()
    zone = LandingZone(root=str(tmp_path / "landing"))
    zone.write(file_key(day, "a.csv", folder), valid_csv(day))
    defs = storage_defs(monkeypatch, tmp_path)
    sensor = defs.get_sensor_def("landing_zone_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        for job in jobs:
            request = dg.RunRequest(job_name=job, partition_key=day)
            execute(defs, request, instance)
        with dg.build_sensor_context(instance=instance, resources={"landing_zone": zone}) as ctx:
            first = sensor.evaluate_tick(ctx)
        assert first.run_requests == []
        zone.write(file_key(day, "b.csv", folder), valid_csv(day))  # a file landing later
        with dg.build_sensor_context(
            instance=instance,
            cursor=first.cursor,
            resources={"landing_zone": zone},
            definitions=defs,
        ) as ctx:
            second = sensor.evaluate_tick(ctx)
        assert [(r.job_name, r.partition_key) for r in second.run_requests] == requested(jobs, day)


def test_a_day_whose_ingestion_did_not_succeed_is_requested_on_a_first_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run killed or failed after writing the raw pings (its clean and quarantined pings
    never written) does not count as an ingestion: the first tick requests the day again."""
    day = latest_complete_day(REGINA).isoformat()
    folder, jobs = LAYOUTS["city"]
    zone = LandingZone(root=str(tmp_path / "landing"))
    zone.write(file_key(day, "a.csv", folder), valid_csv(day))
    defs = storage_defs(monkeypatch, tmp_path)
    sensor = defs.get_sensor_def("landing_zone_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        result = execute(defs, dg.RunRequest(job_name=jobs[0], partition_key=day), instance)
        # as the runner marks a run whose process was killed mid-run
        instance.report_run_failed(instance.get_run_by_id(result.run_id), "process killed")
        with dg.build_sensor_context(
            instance=instance, resources={"landing_zone": zone}, definitions=defs
        ) as ctx:
            first = sensor.evaluate_tick(ctx)
        assert [(r.job_name, r.partition_key) for r in first.run_requests] == requested(jobs, day)


def parquet(tmp_path: Path, *key: str) -> pd.DataFrame:
    return pd.read_parquet(committed_path(tmp_path / "assets", key[:-1], key[-1]).path)


def assert_mixed_export_accounted(summary, cities, tables, unrouted: pd.DataFrame) -> None:
    """Bookkeeping of a mixed export (``simulate_cities(layout="mixed")``) once ingested for
    every city and ``unrouted_pings``; ``tables``: city id -> (raw, clean, quarantined).

    * every row of every file is in exactly one city's raw pings or in unrouted_pings;
    * per city, raw = clean + quarantined, and clean is exactly its rows that are neither dirty
      nor outside its service area;
    * strays and outside rows (in no service area, plausible) are `outside_service_area`.
    """
    assert summary.layout == "mixed"
    per_file = {
        city_id: raw["source_file"].value_counts() for city_id, (raw, _, _) in tables.items()
    }
    unrouted_per_file = unrouted["source_file"].value_counts()
    for landed in summary.files:
        taken = sum(int(counts.get(landed.key, 0)) for counts in per_file.values())
        assert landed.rows == taken + int(unrouted_per_file.get(landed.key, 0)), landed.key
        if landed.readable:
            assert landed.rows == sum(landed.city_rows.values()) + landed.stray_rows
    keys = {landed.key for landed in summary.files}
    assert set(unrouted["source_file"]) <= keys
    for raw, _, _ in tables.values():
        assert set(raw["source_file"]) <= keys
    assert sum(len(raw) for raw, _, _ in tables.values()) + len(unrouted) == summary.rows

    for city in cities:
        raw, clean, quarantined = tables[city.id]
        tally = summary.city(city.id)
        assert len(raw) == len(clean) + len(quarantined), city.id
        assert len(clean) == tally.rows - tally.dirty_rows - tally.outside_rows, city.id
        assert len(clean) > 0, city.id
        assert "outside_service_area" not in set(quarantined["reason"]), city.id
    total_clean = sum(len(clean) for _, clean, _ in tables.values())
    outside = sum(tally.outside_rows for tally in summary.cities)
    assert total_clean == summary.rows - summary.dirty_rows - summary.stray_rows - outside

    reasons = unrouted["reason"].value_counts()
    assert reasons.get("outside_service_area", 0) > 0
    # A re-delivered part repeats its strays: those copies are duplicates, the others end as
    # outside the service area, as do the cities' valid pings beyond their edge.
    repeated_strays = sum(
        landed.stray_rows
        for landed in summary.files
        if landed.key.rsplit("/", 1)[1].startswith("redelivered-")
    )
    assert reasons.get("outside_service_area", 0) == summary.stray_rows - repeated_strays + outside
    assert unrouted["detail"].notna().all()


def test_requested_runs_ingest_a_mixed_export_for_every_city_and_unrouted_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The sensor's runs for one day's export of three cities account for every row once."""
    catalog = write_catalog(tmp_path / "cities.yaml", MULTI_CITIES)
    day = latest_complete_day(REGINA)
    zone = LandingZone(root=str(tmp_path / "landing"))
    summary = simulate_cities(
        multi_city_configs(
            MULTI_CITIES,
            pings_per_day=400,
            start_date=day,
            days=1,
            seed=5,
            file_dirt=frozenset(FILE_DIRT_KINDS),  # an empty, a legacy and a re-delivered part
        ),
        layout="mixed",
        put=zone.write,
        stray_share=0.02,
    )
    assert summary.stray_rows > 0 and summary.unreadable_rows > 0
    names = {landed.key.rsplit("/", 1)[1] for landed in summary.files}
    assert {"legacy-export.csv"} <= names and any(n.startswith("redelivered-") for n in names)
    assert all(landed.key.startswith(f"raw/dt={day}/") for landed in summary.files)
    defs = storage_defs(monkeypatch, tmp_path, catalog)
    sensor = defs.get_sensor_def("landing_zone_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        with dg.build_sensor_context(
            instance=instance, resources={"landing_zone": zone}, definitions=defs
        ) as ctx:
            requests = sensor.evaluate_tick(ctx).run_requests
        assert [(r.job_name, r.partition_key) for r in requests] == requested(
            ALL_CITY_JOBS, day.isoformat()
        )
        for request in requests:
            execute(defs, request, instance)

    tables = {
        city.id: tuple(
            parquet(tmp_path, city.key, name, day.isoformat()) for name in INGESTION_NAMES
        )
        for city in catalog
    }
    unrouted = parquet(tmp_path, "unrouted_pings", day.isoformat())
    assert_mixed_export_accounted(summary, catalog.cities, tables, unrouted)
