"""The landing zone and the Parquet IO manager against a real S3 server (SeaweedFS on loopback).

The data assets run end to end on S3: simulated landing files → raw → clean + quarantine →
hourly busyness for two consecutive days → restaurants → clusters → features of the second day,
with the data asset checks, and every Parquet object is read back from the bucket.
"""

from __future__ import annotations

import datetime
import io

import dagster as dg
import pandas as pd
import pytest
import time_machine
from dagster_aws.s3 import S3Resource

from geo_busyness.assets.features import (
    busyness_features,
    hex_hourly_busyness,
    restaurant_clusters,
    restaurants,
)
from geo_busyness.assets.ingestion import raw_courier_pings, validated_courier_pings
from geo_busyness.checks import data_checks
from geo_busyness.resources.city import CityResource
from geo_busyness.resources.io_manager import ParquetIOManagerResource
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.simulate import FILE_DIRT_KINDS, SimulationConfig, simulate
from geo_busyness_tests.integration.conftest import S3Bucket

pytestmark = pytest.mark.integration

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
    "hourly_keys_are_unique",
}


def s3_landing_zone(bucket: S3Bucket) -> LandingZone:
    return LandingZone(root=bucket.url("landing"), s3=S3Resource(endpoint_url=bucket.endpoint_url))


def read_parquet(bucket: S3Bucket, key: str) -> pd.DataFrame:
    body = bucket.client().get_object(Bucket=bucket.name, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def row_counts(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """``dagster/row_count`` of each materialization, by asset name."""
    counts = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        counts[materialization.asset_key.to_user_string()] = materialization.metadata[
            "dagster/row_count"
        ].value
    return counts


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


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
    outside = [
        "raw/dt=2026-10-01/nested/c.csv",  # sub-folder
        "raw/dt=2026-10-01/notes.txt",  # not csv/parquet
        "raw/dt=2026-10-012/d.csv",  # not a day folder, shares the day's prefix string
        "raw/dt=2026-10-02/e.csv",  # another day
        "raw/e.csv",  # no day folder
        "elsewhere/raw/dt=2026-10-01/f.csv",  # outside raw/
    ]
    for key in in_layout + outside:
        zone.write(key, b"x")
    # Outside the zone's root: invisible to it.
    s3_env.client().put_object(Bucket=s3_env.name, Key="raw/dt=2026-10-01/g.csv", Body=b"x")

    assert [f.key for f in zone.day_files("2026-10-01")] == in_layout
    assert [f.key for f in zone.day_files("2026-10-02")] == ["raw/dt=2026-10-02/e.csv"]
    assert zone.day_files("2026-10-03") == []
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
    )
    assert summary.files == len(zone.list_files()) >= 2
    for day in days:
        assert zone.day_files(day), f"simulator wrote nothing for {day}"

    resources = {
        "city": CityResource(),
        "landing_zone": zone,
        "io_manager": ParquetIOManagerResource(
            base_path=s3_env.url("assets"), s3_endpoint_url=s3_env.endpoint_url
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

        raw = read_parquet(s3_env, f"assets/raw_courier_pings/{day}.parquet")
        clean = read_parquet(s3_env, f"assets/clean_courier_pings/{day}.parquet")
        quarantined = read_parquet(s3_env, f"assets/quarantined_pings/{day}.parquet")
        hourly = read_parquet(s3_env, f"assets/hex_hourly_busyness/{day}.parquet")

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
    table = read_parquet(s3_env, "assets/restaurants.parquet")
    clusters = read_parquet(s3_env, "assets/restaurant_clusters.parquet")
    assert len(table) > 0
    assert table["restaurant_id"].is_unique
    assert sorted(clusters["restaurant_id"]) == sorted(table["restaurant_id"])
    assert row_counts(result) == {"restaurants": len(table), "restaurant_clusters": len(clusters)}

    result = run([busyness_features], partition_key=days[1])
    features = read_parquet(s3_env, f"assets/busyness_features/{days[1]}.parquet")
    assert len(features) > 0
    assert row_counts(result) == {"busyness_features": len(features)}
    # Features know only the past: the cells active the day before, and the restaurants'
    # cells (a cell first active on the second day has no features yet).
    first_day = read_parquet(s3_env, f"assets/hex_hourly_busyness/{days[0]}.parquet")
    featured = set(features["h3_cell"])
    assert set(first_day["h3_cell"]) <= featured
    assert featured <= set(first_day["h3_cell"]) | set(clusters["h3_cell"])

    expected = {f"assets/{name}/{day}.parquet" for name in DAILY_OUTPUTS for day in days} | {
        "assets/restaurants.parquet",
        "assets/restaurant_clusters.parquet",
        f"assets/busyness_features/{days[1]}.parquet",
    }
    assert set(s3_env.keys("assets/")) == expected
