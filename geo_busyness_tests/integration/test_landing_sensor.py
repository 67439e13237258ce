"""The landing-zone sensor on a local directory and on a real S3 server (SeaweedFS on loopback).

Each tick gets a fresh sensor context carrying only the cursor string the previous tick
returned, as after a daemon restart: no file may be skipped and no day version run twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from geo_busyness.assets.ingestion import raw_courier_pings, validated_courier_pings
from geo_busyness.checks import clean_pings_match_contract, raw_pings_are_fresh, rows_are_conserved
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.city import CityResource
from geo_busyness.resources.io_manager import ParquetIOManagerResource
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.sensors import landing_zone_sensor
from geo_busyness.simulate import SimulationConfig, simulate
from geo_busyness_tests.integration.conftest import S3Bucket

pytestmark = pytest.mark.integration

INGESTION_KEYS = {
    dg.AssetKey("raw_courier_pings"),
    dg.AssetKey("clean_courier_pings"),
    dg.AssetKey("quarantined_pings"),
}
OLD_DAY, DAY_1, DAY_2, DAY_3 = "2025-01-02", "2025-02-01", "2025-02-02", "2025-02-03"
CSV = b"courier_id,order_number\nc1,1\n"


def file_key(day: str, name: str) -> str:
    return f"raw/dt={day}/{name}"


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

    def __init__(self, zone: LandingZone):
        self.zone = zone
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
            return landing_zone_sensor(ctx)

    def run(self) -> list[str]:
        """One tick; the days it requested."""
        self.last = self.evaluate(self.cursor)
        self.cursor = self.last.cursor
        self.run_keys += [request.run_key for request in self.last.run_requests]
        return [request.partition_key for request in self.last.run_requests]


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_every_day_version_is_requested_once_across_restarts(landing_zone: LandingZone):
    ticks = Ticks(landing_zone)
    assert ticks.run() == []
    assert "0 file(s) in 0 day(s)" in ticks.last.skip_reason.skip_message

    for key in (
        file_key(DAY_1, "a.csv"),
        file_key(DAY_1, "b.parquet"),
        file_key(DAY_2, "a.csv"),
        file_key(DAY_3, "a.csv"),
        file_key(DAY_3, "b.csv"),
    ):
        landing_zone.write(key, CSV)
    assert ticks.run() == [DAY_1, DAY_2, DAY_3]
    assert ticks.run() == []
    assert "5 file(s) in 3 day(s)" in ticks.last.skip_reason.skip_message

    # A file landing in the same second as one already seen (`since_last_modified` misses it):
    # forced locally; on S3 the upload right after the tick mostly shares its second too.
    landing_zone.write(file_key(DAY_1, "c.csv"), CSV)
    if not landing_zone.is_s3:
        seen = (Path(landing_zone.root) / file_key(DAY_1, "a.csv")).stat().st_mtime_ns
        os.utime(Path(landing_zone.root) / file_key(DAY_1, "c.csv"), ns=(seen, seen))
    assert ticks.run() == [DAY_1]

    landing_zone.write(file_key(DAY_2, "a.csv"), CSV + b"c2,2\n")
    assert ticks.run() == [DAY_2]

    # The last key of the listing, what `since_key` would point at.
    delete(landing_zone, file_key(DAY_3, "b.csv"))
    assert ticks.run() == [DAY_3]

    for name in ("a.csv", "b.parquet", "c.csv"):
        delete(landing_zone, file_key(DAY_1, name))
    assert ticks.run() == []
    assert any(f"partition {DAY_1} keeps its last materialization" in m for m in ticks.logged)

    cursor_before = ticks.cursor
    landing_zone.write(file_key(OLD_DAY, "late.csv"), CSV)
    assert ticks.run() == [OLD_DAY]

    # Had the daemon lost that cursor update, the same run key comes back: Dagster skips it.
    replay = ticks.evaluate(cursor_before)
    assert [r.run_key for r in replay.run_requests] == [r.run_key for r in ticks.last.run_requests]

    assert len(ticks.run_keys) == len(set(ticks.run_keys)) == 7
    assert all(key.split(":")[0] in {OLD_DAY, DAY_1, DAY_2, DAY_3} for key in ticks.run_keys)


def test_ignored_keys_are_logged_once(landing_zone: LandingZone):
    landing_zone.write(file_key(DAY_1, "a.csv"), CSV)
    landing_zone.write(file_key(DAY_1, "notes.txt"), b"not pings")
    landing_zone.write("raw/2025-02-01.csv", CSV)
    ticks = Ticks(landing_zone)
    assert ticks.run() == [DAY_1]
    assert ticks.run() == []
    ignored = [m for m in ticks.logged if m.startswith("Ignoring")]
    assert ignored == [
        f"Ignoring {landing_zone.location('raw/2025-02-01.csv')}: "
        "not in a raw/dt=YYYY-MM-DD/ folder",
        f"Ignoring {landing_zone.location(file_key(DAY_1, 'notes.txt'))}: "
        "extension '.txt' is not one of .csv, .tsv, .parquet (any letter case, optionally "
        "compressed: .gz, .gzip, .zip, .bz2, .xz)",
    ]
    assert "2 key(s) ignored" in ticks.last.skip_reason.skip_message


def test_unreadable_cursor_is_reported_and_requests_the_same_runs(tmp_path: Path):
    zone = LandingZone(root=str(tmp_path / "landing"))
    zone.write(file_key(DAY_1, "a.csv"), CSV)
    ticks = Ticks(zone)
    ticks.run()
    ticks.cursor = "1738368000"  # e.g. a since_last_modified timestamp of another sensor
    ticks.run()
    assert ticks.run_keys[0] == ticks.run_keys[1]
    assert any(m.startswith("Landing cursor discarded (a JSON int") for m in ticks.logged)


def test_requested_run_ingests_the_day(tmp_path: Path):
    day = daily_partitions.get_last_partition_key()
    zone = LandingZone(root=str(tmp_path / "landing"))
    simulate(
        SimulationConfig(start_date=dt.date.fromisoformat(day), days=1, pings_per_day=300),
        put=zone.write,
        progress=False,
    )
    defs = dg.Definitions(
        assets=[raw_courier_pings, validated_courier_pings],
        asset_checks=[raw_pings_are_fresh, clean_pings_match_contract, rows_are_conserved],
        sensors=[landing_zone_sensor],
        resources={
            "landing_zone": zone,
            "city": CityResource(),
            "io_manager": ParquetIOManagerResource(base_path=str(tmp_path / "assets")),
        },
    )
    with dg.build_sensor_context(
        definitions=defs, resources={"landing_zone": zone}, instance=dg.DagsterInstance.ephemeral()
    ) as context:
        [request] = landing_zone_sensor.evaluate_tick(context).run_requests

    assert (request.partition_key, request.tags["dagster/partition"]) == (day, day)
    assert request.run_key.startswith(f"{day}:")
    job = defs.get_repository_def().get_job(landing_zone_sensor.job_name)
    result = job.execute_in_process(
        partition_key=day,
        asset_selection=request.asset_selection,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == INGESTION_KEYS
    assert {e.asset_check_key.name for e in result.get_asset_check_evaluations()} == {
        "raw_pings_are_fresh",
        "clean_pings_match_contract",
        "rows_are_conserved",
    }
    assert (tmp_path / "assets" / "clean_courier_pings" / f"{day}.parquet").exists()


def test_days_already_ingested_are_not_rerun_on_a_first_tick(tmp_path: Path):
    """A landing zone loaded before the sensor ran (e.g. by the demo) is not re-ingested; a
    file that changes afterwards is."""
    day = daily_partitions.get_last_partition_key()
    zone = LandingZone(root=str(tmp_path / "landing"))
    zone.write(file_key(day, "a.csv"), CSV)
    assets = [raw_courier_pings, validated_courier_pings]
    resources = {
        "landing_zone": zone,
        "city": CityResource(),
        "io_manager": ParquetIOManagerResource(base_path=str(tmp_path / "assets")),
    }
    with dg.instance_for_test() as instance:
        dg.materialize(assets, partition_key=day, instance=instance, resources=resources)
        with dg.build_sensor_context(instance=instance, resources={"landing_zone": zone}) as ctx:
            first = landing_zone_sensor.evaluate_tick(ctx)
        assert first.run_requests == []
        zone.write(file_key(day, "b.csv"), CSV)  # a file landing later
        definitions = dg.Definitions(
            assets=assets, sensors=[landing_zone_sensor], resources=resources
        )
        with dg.build_sensor_context(
            instance=instance,
            cursor=first.cursor,
            resources={"landing_zone": zone},
            definitions=definitions,
        ) as ctx:
            second = landing_zone_sensor.evaluate_tick(ctx)
        assert [request.partition_key for request in second.run_requests] == [day]
