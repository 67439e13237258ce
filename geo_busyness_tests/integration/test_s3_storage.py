"""The landing zone and the Parquet IO manager against a real S3 server (SeaweedFS on loopback).

The data assets run end to end on S3: simulated landing files → raw → clean + quarantine →
hourly busyness for two consecutive days → restaurants → clusters → features of the second day,
with the data asset checks, and every Parquet object is read back from the bucket. A mixed
export of several cities (``raw/dt=D/``) is ingested on S3 for each city and
``unrouted_pings``, and every row of it is accounted for once.
"""

from __future__ import annotations

import datetime
import io
import json
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import time_machine
from dagster_aws.s3 import S3Resource

from geo_busyness.assets.features import build_features
from geo_busyness.assets.ingestion import VALIDATED, build_ingestion, build_unrouted
from geo_busyness.checks import build_checks
from geo_busyness.core.city import DEFAULT_CITY, City
from geo_busyness.resources.io_manager import ParquetIOManagerResource
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.resources.quality import DataQualityPolicy
from geo_busyness.resources.reports import ReportStore
from geo_busyness.simulate import (
    FILE_DIRT_KINDS,
    MULTI_CITIES,
    SimulationConfig,
    multi_city_configs,
    simulate,
    simulate_cities,
)
from geo_busyness.stack.services import SeaweedFS
from geo_busyness_tests.integration.conftest import S3Bucket
from geo_busyness_tests.integration.test_landing_sensor import (
    INGESTION_NAMES,
    assert_mixed_export_accounted,
)

pytestmark = pytest.mark.integration

CITY = DEFAULT_CITY  # the packaged catalog's only city
raw_courier_pings, validated_courier_pings = build_ingestion(CITY, (CITY,))
restaurants, restaurant_clusters, hex_hourly_busyness, busyness_features = build_features(CITY)


def data_checks_of(city: City) -> list[dg.AssetChecksDefinition]:
    """The city's data checks (not the promotion gates on its model evaluation)."""
    return [
        check
        for check in build_checks(city, "cities.yaml")
        if all(key.asset_key.path[-1] != "model_evaluation" for key in check.check_keys)
    ]


data_checks = data_checks_of(CITY)
DATA_ASSETS = [
    raw_courier_pings,
    validated_courier_pings,
    hex_hourly_busyness,
    restaurants,
    restaurant_clusters,
    busyness_features,
]
DAILY_ASSETS = [raw_courier_pings, validated_courier_pings, hex_hourly_busyness]
DAILY_OUTPUTS = (
    "raw_courier_pings",
    "clean_courier_pings",
    "quarantined_pings",
    "hex_hourly_busyness",
)
DAILY_CHECKS = {
    "raw_pings_are_fresh",
    "clean_pings_match_contract",
    "rows_are_conserved",
    "quarantine_share_is_low",
    "hourly_keys_are_unique",
}


def s3_landing_zone(bucket: S3Bucket) -> LandingZone:
    return LandingZone(root=bucket.url("landing"), s3=S3Resource(endpoint_url=bucket.endpoint_url))


def stored_key(bucket: S3Bucket, key: str) -> str:
    """The object holding the table of ``key`` (``<prefix>/<name>/<day>.parquet``): for the
    clean and quarantined pings, the version their day's commit record names."""
    prefix, name, file = key.rsplit("/", 2)
    if name not in ("clean_courier_pings", "quarantined_pings"):
        return key
    record_key = f"{prefix}/{VALIDATED}/{file.removesuffix('.parquet')}.json"
    record = bucket.client().get_object(Bucket=bucket.name, Key=record_key)["Body"].read()
    return f"{prefix}/{name}/{json.loads(record)['files'][name]}"


def commit_records(keys: set[str]) -> set[str]:
    """The commit records of the clean and quarantined pings among ``keys``."""
    return {
        f"{key.rsplit('/', 2)[0]}/{VALIDATED}/{key.rsplit('/', 1)[1].removesuffix('.parquet')}.json"
        for key in keys
        if key.rsplit("/", 2)[1] == "clean_courier_pings"
    }


def read_parquet(bucket: S3Bucket, key: str) -> pd.DataFrame:
    body = bucket.client().get_object(Bucket=bucket.name, Key=stored_key(bucket, key))["Body"]
    return pd.read_parquet(io.BytesIO(body.read()))


def row_counts(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """``dagster/row_count`` of each materialization, by asset name (without the city)."""
    counts = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        counts[materialization.asset_key.path[-1]] = materialization.metadata[
            "dagster/row_count"
        ].value
    return counts


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def test_the_server_writes_its_log_files_beside_its_data(seaweedfs: SeaweedFS) -> None:
    """SeaweedFS's log files go to the system temp dir unless told otherwise: one set per start,
    left behind for good."""
    assert list((seaweedfs.data_dir / "logs").glob("weed.*.log.INFO.*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"weed.*.log.*.{seaweedfs.pid}"))


def test_landing_zone_round_trip_on_s3(s3_env: S3Bucket) -> None:
    zone = s3_landing_zone(s3_env)
    assert zone.is_s3
    files = {
        "raw/dt=2026-10-01/part-000.csv": b"courier_id,order_number\nc1,1\n",
        "raw/dt=2026-10-01/part-001.parquet": b"PAR1-not-really",
        "raw/dt=2026-10-02/part-000.csv": b"courier_id,order_number\nc2,2\n",
    }
    for key, content in files.items():
        zone.write(key, content)

    # Objects live under the root prefix of the bucket.
    assert s3_env.keys() == sorted(f"landing/{key}" for key in files)
    listed = zone.list_files()
    assert [f.key for f in listed] == sorted(files)
    for landing_file in listed:
        assert landing_file.size == len(files[landing_file.key])
        assert landing_file.modified.tzinfo is not None
        assert landing_file.version
        assert zone.read(landing_file.key) == files[landing_file.key]

    # Rewriting a file with other content changes its version; other files keep theirs.
    key = "raw/dt=2026-10-01/part-000.csv"
    before = {f.key: f.version for f in zone.list_files()}
    zone.write(key, b"courier_id,order_number\nc1,1\nc3,3\n")
    after = {f.key: f.version for f in zone.list_files()}
    assert after[key] != before[key]
    del after[key], before[key]
    assert after == before
    assert zone.read(key).endswith(b"c3,3\n")
    assert zone.location(key) == f"s3://{s3_env.name}/landing/{key}"


def test_landing_zone_day_files_follow_layout(s3_env: S3Bucket) -> None:
    zone = s3_landing_zone(s3_env)
    in_layout = ["raw/dt=2026-10-01/a.csv", "raw/dt=2026-10-01/b.parquet"]
    of_regina = ["raw/city=regina/dt=2026-10-01/a.csv", "raw/city=regina/dt=2026-10-01/b.TSV.gz"]
    outside = [
        "raw/dt=2026-10-01/nested/c.csv",  # sub-folder
        "raw/dt=2026-10-01/notes.txt",  # not csv/parquet
        "raw/dt=2026-10-012/d.csv",  # not a day folder, shares the day's prefix string
        "raw/dt=2026-10-02/e.csv",  # another day
        "raw/e.csv",  # no day folder
        "elsewhere/raw/dt=2026-10-01/f.csv",  # outside raw/
        "raw/city=regina/dt=2026-10-01/nested/c.csv",  # sub-folder of a city's day
        "raw/city=regina/dt=2026-10-012/d.csv",  # shares the city day's prefix string
        "raw/city=regina-east/dt=2026-10-01/a.csv",  # shares the city's prefix string
        "raw/city=new-york/dt=2026-10-01/a.csv",  # another city
    ]
    for key in in_layout + of_regina + outside:
        zone.write(key, b"x")
    # Outside the zone's root: invisible to it.
    s3_env.client().put_object(Bucket=s3_env.name, Key="raw/dt=2026-10-01/g.csv", Body=b"x")

    assert [f.key for f in zone.day_files("2026-10-01")] == in_layout
    assert [f.key for f in zone.day_files("2026-10-02")] == ["raw/dt=2026-10-02/e.csv"]
    assert zone.day_files("2026-10-03") == []
    assert [f.key for f in zone.day_files("2026-10-01", "regina")] == of_regina
    assert [f.key for f in zone.day_files("2026-10-01", "new-york")] == [
        "raw/city=new-york/dt=2026-10-01/a.csv"
    ]
    assert zone.day_files("2026-10-02", "regina") == []
    assert [f.key for f in zone.day_listing("2026-10-01", "regina")] == sorted(
        [*of_regina, "raw/city=regina/dt=2026-10-01/nested/c.csv"]
    )
    assert "raw/dt=2026-10-01/g.csv" not in [f.key for f in zone.list_files()]
    assert "elsewhere/raw/dt=2026-10-01/f.csv" not in [f.key for f in zone.list_files()]


# Days fixed by the test; the clock is frozen on the day after them, so the freshness check has
# something fresh to pass whatever date the suite runs on.
FIRST_DAY, SECOND_DAY = datetime.date(2026, 3, 7), datetime.date(2026, 3, 8)
FROZEN_NOW = datetime.datetime(2026, 3, 9, 6, 30, tzinfo=datetime.UTC)


def test_data_assets_materialize_to_s3(s3_env: S3Bucket) -> None:
    with time_machine.travel(FROZEN_NOW, tick=True):
        materialize_data_assets_to_s3(s3_env)


def materialize_data_assets_to_s3(s3_env: S3Bucket) -> None:
    first = FIRST_DAY
    days = [FIRST_DAY.isoformat(), SECOND_DAY.isoformat()]

    zone = s3_landing_zone(s3_env)
    summary = simulate(
        # every kind of file dirt on both days: an empty file, a wrong-header export quarantined
        # whole, a re-delivered part (chosen here, not by the calendar)
        SimulationConfig(
            start_date=first,
            days=2,
            pings_per_day=3000,
            seed=11,
            file_dirt=frozenset(FILE_DIRT_KINDS),
        ),
        put=zone.write,
        progress=False,
        city_folder=True,  # the city's own folder: every row is the city's
    )
    assert summary.files == len(zone.list_files()) >= 2
    for day in days:
        assert zone.day_files(day, CITY.id), f"simulator wrote nothing for {day}"
        assert zone.day_files(day) == []

    resources = {
        "data_quality_policy": DataQualityPolicy(),
        "landing_zone": zone,
        "io_manager": ParquetIOManagerResource(
            base_path=s3_env.url("assets"), s3_endpoint_url=s3_env.endpoint_url
        ),
        # S3 without an HTTP address: the busyness map is embedded in its metadata
        "report_store": ReportStore(
            base_path=s3_env.url("reports"), s3_endpoint_url=s3_env.endpoint_url
        ),
    }
    instance = dg.DagsterInstance.ephemeral()

    def run(selection, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [*DATA_ASSETS, *data_checks],
            selection=selection,
            partition_key=partition_key,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        failures = [
            event.message for event in result.all_events if event.event_type_value == "STEP_FAILURE"
        ]
        assert result.success, f"materialize {selection} [{partition_key}] failed: {failures}"
        return result

    totals = {"raw": 0, "clean": 0, "quarantined": 0}
    for day in days:
        result = run(DAILY_ASSETS, partition_key=day)
        assert check_outcomes(result) == dict.fromkeys(DAILY_CHECKS, True)
        counts = row_counts(result)

        raw = read_parquet(s3_env, f"assets/regina/raw_courier_pings/{day}.parquet")
        clean = read_parquet(s3_env, f"assets/regina/clean_courier_pings/{day}.parquet")
        quarantined = read_parquet(s3_env, f"assets/regina/quarantined_pings/{day}.parquet")
        hourly = read_parquet(s3_env, f"assets/regina/hex_hourly_busyness/{day}.parquet")

        assert len(raw) == len(clean) + len(quarantined)
        assert len(clean) > 0 and len(quarantined) > 0  # the simulator lands dirty rows too
        assert counts == {
            "raw_courier_pings": len(raw),
            "clean_courier_pings": len(clean),
            "quarantined_pings": len(quarantined),
            "hex_hourly_busyness": len(hourly),
        }
        assert quarantined["reason"].notna().all()
        # Every clean ping is counted in exactly one hexagon-hour of its own day.
        assert int(hourly["pings"].sum()) == len(clean)
        assert (hourly["orders"] <= hourly["pings"]).all()
        assert (pd.to_datetime(hourly["hour_start"], utc=True).dt.date.astype(str) == day).all()
        totals["raw"] += len(raw)
        totals["clean"] += len(clean)
        totals["quarantined"] += len(quarantined)

    # The simulator's own bookkeeping, in source rows: every row it wrote is read (a file
    # quarantined whole counts each of its rows), exactly the rows it made dirty are refused.
    assert totals["raw"] == summary.rows
    assert totals["clean"] == summary.rows - summary.dirty_rows
    assert totals["quarantined"] == summary.dirty_rows

    result = run([restaurants, restaurant_clusters])
    assert check_outcomes(result) == {}
    table = read_parquet(s3_env, "assets/regina/restaurants.parquet")
    clusters = read_parquet(s3_env, "assets/regina/restaurant_clusters.parquet")
    assert len(table) > 0
    assert table["restaurant_id"].is_unique
    assert sorted(clusters["restaurant_id"]) == sorted(table["restaurant_id"])
    assert row_counts(result) == {"restaurants": len(table), "restaurant_clusters": len(clusters)}

    result = run([busyness_features], partition_key=days[1])
    features = read_parquet(s3_env, f"assets/regina/busyness_features/{days[1]}.parquet")
    assert len(features) > 0
    assert row_counts(result) == {"busyness_features": len(features)}
    # Features know only the past: the cells active the day before, and the restaurants'
    # cells (a cell first active on the second day has no features yet).
    first_day = read_parquet(s3_env, f"assets/regina/hex_hourly_busyness/{days[0]}.parquet")
    featured = set(features["h3_cell"])
    assert set(first_day["h3_cell"]) <= featured
    assert featured <= set(first_day["h3_cell"]) | set(clusters["h3_cell"])

    tables = {f"assets/regina/{name}/{day}.parquet" for name in DAILY_OUTPUTS for day in days} | {
        "assets/regina/restaurants.parquet",
        "assets/regina/restaurant_clusters.parquet",
        f"assets/regina/busyness_features/{days[1]}.parquet",
    }
    expected = {stored_key(s3_env, key) for key in tables} | commit_records(tables)
    assert set(s3_env.keys("assets/")) == expected


MIXED_DAY = datetime.date(2026, 3, 8)


def test_mixed_export_of_several_cities_is_ingested_on_s3(s3_env: S3Bucket) -> None:
    """One day's export of three cities (``raw/dt=D/``, with strays between the towns and every
    kind of file dirt) ingested on S3 for each city and ``unrouted_pings``."""
    with time_machine.travel(FROZEN_NOW, tick=True):
        ingest_mixed_export_on_s3(s3_env)


def ingest_mixed_export_on_s3(s3_env: S3Bucket) -> None:
    cities = MULTI_CITIES
    day = MIXED_DAY.isoformat()
    zone = s3_landing_zone(s3_env)
    summary = simulate_cities(
        multi_city_configs(
            cities,
            pings_per_day=500,
            start_date=MIXED_DAY,
            days=1,
            seed=3,
            file_dirt=frozenset(FILE_DIRT_KINDS),
        ),
        layout="mixed",
        put=zone.write,
        stray_share=0.02,
    )
    assert summary.stray_rows > 0 and summary.unreadable_rows > 0
    assert [f.key for f in zone.day_files(day)] == sorted(summary.keys)

    resources = {
        "landing_zone": zone,
        "data_quality_policy": DataQualityPolicy(),
        "io_manager": ParquetIOManagerResource(
            base_path=s3_env.url("assets"), s3_endpoint_url=s3_env.endpoint_url
        ),
    }
    instance = dg.DagsterInstance.ephemeral()
    tables = {}
    for city in cities:
        assets = build_ingestion(city, cities)
        checks = [
            check
            for check in data_checks_of(city)
            if all(key.asset_key.path[-1] != "hex_hourly_busyness" for key in check.check_keys)
        ]
        result = dg.materialize(
            [*assets, *checks],
            partition_key=day,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert result.success, city.id
        outcomes = check_outcomes(result)
        assert outcomes == dict.fromkeys(DAILY_CHECKS - {"hourly_keys_are_unique"}, True), city.id
        tables[city.id] = tuple(
            read_parquet(s3_env, f"assets/{city.key}/{name}/{day}.parquet")
            for name in INGESTION_NAMES
        )
        assert row_counts(result) == {
            name: len(table) for name, table in zip(INGESTION_NAMES, tables[city.id], strict=True)
        }
    result = dg.materialize(
        [build_unrouted(cities)], partition_key=day, resources=resources, instance=instance
    )
    unrouted = read_parquet(s3_env, f"assets/unrouted_pings/{day}.parquet")
    assert row_counts(result) == {"unrouted_pings": len(unrouted)}
    assert_mixed_export_accounted(summary, cities, tables, unrouted)
    tables = {
        f"assets/{city.key}/{name}/{day}.parquet" for city in cities for name in INGESTION_NAMES
    } | {f"assets/unrouted_pings/{day}.parquet"}
    expected = {stored_key(s3_env, key) for key in tables} | commit_records(tables)
    assert set(s3_env.keys("assets/")) == expected
