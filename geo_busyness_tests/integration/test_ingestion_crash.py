"""A real kill -9 of a process materializing a day's ingestion in the middle of its writes.

The clean pings of the day are written, the quarantine is half written when the process is
killed (a pause is injected there, so that the kill lands between the two writes every time).
Read back through the IO manager, clean and quarantined stay those of the previous run (rows
in = clean + quarantined); the re-run publishes a consistent day and no temporary file or
superseded table stays behind. On local disk and on S3 (SeaweedFS).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from geo_busyness.assets.ingestion import build_ingestion
from geo_busyness.core.catalog import load_configured_catalog
from geo_busyness.resources.io_manager import ParquetIOManagerResource
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.simulate import SimulationConfig, simulate
from geo_busyness_tests.integration.conftest import S3Bucket

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REGINA = load_configured_catalog().get("regina")
DAY = datetime.date(2026, 10, 1)
PAIR = ("clean_courier_pings", "quarantined_pings")

# The child: ingestion of DAY, paused (then killed by the test) in the middle of writing the
# quarantine, after the clean pings were written.
CHILD = textwrap.dedent(
    """
    import io, pathlib, sys, time
    import dagster as dg
    import pandas as pd
    sys.path.insert(0, sys.argv[1])
    from test_ingestion_crash import ingest

    original = pd.DataFrame.to_parquet

    def to_parquet(self, path=None, *args, **kwargs):
        if "reason" not in self.columns:
            return original(self, path, *args, **kwargs)
        buffer = io.BytesIO()
        original(self, buffer, *args, **kwargs)
        path.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        path.flush()
        pathlib.Path(sys.argv[4]).touch()
        time.sleep(600)

    pd.DataFrame.to_parquet = to_parquet
    ingest(sys.argv[2], sys.argv[3], dg.DagsterInstance.ephemeral())
    """
)


def io_manager(base: str) -> ParquetIOManagerResource:
    if base.startswith("s3://"):
        return ParquetIOManagerResource(
            base_path=base, s3_endpoint_url=os.environ["GEO_BUSYNESS_TEST_S3_ENDPOINT"]
        )
    return ParquetIOManagerResource(base_path=base)


def ingest(landing: str, base: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        build_ingestion(REGINA, (REGINA,)),
        partition_key=DAY.isoformat(),
        instance=instance,
        resources={"landing_zone": LandingZone(root=landing), "io_manager": io_manager(base)},
    )


def read_back(base: str, instance: dg.DagsterInstance) -> dict[str, pd.DataFrame]:
    """raw, clean and quarantined of DAY as a downstream asset reads them."""
    raw, validated = build_ingestion(REGINA, (REGINA,))
    seen = {}

    @dg.asset(
        partitions_def=raw.partitions_def,
        ins={
            name: dg.AssetIn(key=dg.AssetKey([REGINA.key, name]))
            for name in ("raw_courier_pings", *PAIR)
        },
    )
    def reader(raw_courier_pings, clean_courier_pings, quarantined_pings) -> None:
        seen.update(raw=raw_courier_pings, clean=clean_courier_pings, quarantined=quarantined_pings)

    result = dg.materialize(
        [raw, validated, reader],
        selection=[reader],
        partition_key=DAY.isoformat(),
        instance=instance,
        # the unselected raw asset still needs its resource (never used)
        resources={"io_manager": io_manager(base), "landing_zone": LandingZone(root=".")},
    )
    assert result.success
    return seen


def kill_in_the_middle(landing: str, base: str, marker: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), landing, base, str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the child never reached the quarantine's write"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def land_a_late_file(landing: LandingZone) -> None:
    """A late file of the same day with new pings (another seed): raw, clean and quarantined
    all change, so a clean and a quarantine of different runs do not add up."""
    late = {}
    simulate(
        SimulationConfig(start_date=DAY, days=1, pings_per_day=1500, seed=99, dirty_files=False),
        put=lambda key, data: late.setdefault(key, data),
        progress=False,
    )
    key, data = next(iter(sorted(late.items())))
    folder, name = key.rsplit("/", 1)
    landing.write(f"{folder}/late-{name}", data)


def run_kill_and_rerun(tmp_path: Path, base: str, stored: callable) -> None:
    landing = LandingZone(root=str(tmp_path / "landing"))
    simulate(
        SimulationConfig(start_date=DAY, days=1, pings_per_day=3000, seed=5, dirty_files=False),
        put=landing.write,
        progress=False,
    )
    instance = dg.DagsterInstance.ephemeral()
    assert ingest(landing.root, base, instance).success
    first = read_back(base, instance)
    first_raw = len(first["raw"])
    assert first_raw == len(first["clean"]) + len(first["quarantined"]) > 0

    land_a_late_file(landing)
    kill_in_the_middle(landing.root, base, tmp_path / "paused")

    after_kill = read_back(base, instance)
    # raw is of the killed run (its own step had finished); the pair is still the first run's
    assert len(after_kill["raw"]) > first_raw
    assert len(after_kill["clean"]) + len(after_kill["quarantined"]) == first_raw
    pd.testing.assert_frame_equal(after_kill["clean"], first["clean"])
    pd.testing.assert_frame_equal(after_kill["quarantined"], first["quarantined"])

    assert ingest(landing.root, base, instance).success
    again = read_back(base, instance)
    assert len(again["raw"]) == len(after_kill["raw"])
    assert len(again["raw"]) == len(again["clean"]) + len(again["quarantined"])
    files = stored()
    assert not [name for name in files if "/.tmp-" in name or name.startswith(".tmp-")]
    for name in ("raw_courier_pings", *PAIR):
        day_files = [f for f in files if f.startswith(f"regina/{name}/{DAY}.")]
        assert len(day_files) == 1, (name, files)


def test_kill_9_between_the_writes_of_clean_and_quarantine_then_rerun(tmp_path):
    assets = tmp_path / "assets"

    def stored() -> list[str]:
        return sorted(p.relative_to(assets).as_posix() for p in assets.rglob("*") if p.is_file())

    run_kill_and_rerun(tmp_path, str(assets), stored)


def test_kill_9_between_the_writes_on_s3(tmp_path, s3_env: S3Bucket, monkeypatch):
    monkeypatch.setenv("GEO_BUSYNESS_TEST_S3_ENDPOINT", s3_env.endpoint_url)

    def stored() -> list[str]:
        return [key.removeprefix("assets/") for key in s3_env.keys("assets/")]

    run_kill_and_rerun(tmp_path, s3_env.url("assets"), stored)
