"""``geo-busyness stack``, as a user runs it: ``up`` starts SeaweedFS, the MLflow server and
Dagster (webserver + daemon) on loopback and seeds the landing zone; the landing sensor ingests
a seeded day into the bucket; ``status`` reports it; ``down`` stops every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import dagster as dg
import pytest
from botocore.config import Config

from geo_busyness.stack.local_stack import BUCKET, process_alive
from geo_busyness.stack.services import SeaweedFS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.slow]

CLI = str(Path(sys.executable).parent / "geo-busyness")
FREE_PORTS = [f"--{name}-port=0" for name in ("dagster", "mlflow", "s3", "endpoint")]
INGESTED_WITHIN_S = 300


def stack(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "stack", *args, "--root", str(root)],
        # the daemon ticks the sensors every few seconds instead of every 30 s
        env={**os.environ, "GEO_BUSYNESS_SENSOR_INTERVAL_SECONDS": "3"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    started = stack(root, "up", "--detach", "--seed-days=2", "--pings-per-day=2000", *FREE_PORTS)
    state = json.loads((root / "stack.json").read_text()) if started.returncode == 0 else None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield root, state, started.stdout
    finally:
        stopped = stack(root, "down", timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def s3_client(state: dict):
    env = state["env"]
    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).client(
        "s3",
        endpoint_url=env["GEO_BUSYNESS_S3_ENDPOINT_URL"],
        config=Config(s3={"addressing_style": "path"}),
    )


def keys(state: dict, prefix: str) -> list[str]:
    listing = s3_client(state).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_up_prints_where_everything_is_and_every_service_answers(running_stack):
    _, state, output = running_stack
    for name in ("dagster", "mlflow"):
        assert state["urls"][name] in output
    assert http_ok(f"{state['urls']['dagster']}/server_info")
    assert http_ok(f"{state['urls']['mlflow']}/health")
    assert all(process_alive(pid) for pid in state["process_groups"].values())
    assert all(url.startswith("http://127.0.0.1:") for url in state["urls"].values())


def test_landing_zone_is_seeded_in_the_bucket(running_stack):
    _, state, _ = running_stack
    # `geo-busyness simulate` writes the catalog's city into its own folder
    days = {key.split("/")[3] for key in keys(state, "landing/raw/city=regina/")}
    assert len(days) == 2 and all(day.startswith("dt=") for day in days)


def test_a_second_up_is_refused_while_the_stack_runs(running_stack):
    root, _, _ = running_stack
    again = stack(root, "up", "--detach", *FREE_PORTS, timeout=60)
    assert again.returncode == 1
    assert "already running" in again.stderr
    status = stack(root, "status", timeout=60)
    assert status.returncode == 0 and "dagster" in status.stdout


def test_the_daemon_ingests_a_seeded_day_into_the_bucket(running_stack):
    _, state, _ = running_stack
    deadline = time.monotonic() + INGESTED_WITHIN_S
    with dg.DagsterInstance.from_config(state["env"]["DAGSTER_HOME"]) as instance:
        while time.monotonic() < deadline:
            done = instance.get_materialized_partitions(
                dg.AssetKey(["regina", "raw_courier_pings"])
            )
            if done:
                break
            time.sleep(1)
        assert done, f"no day ingested within {INGESTED_WITHIN_S} s; logs in {state['logs']}"
    assert any(key.startswith("assets/regina/raw_courier_pings/") for key in keys(state, "assets/"))


def test_down_stops_every_process_and_the_bucket_keeps_its_objects(running_stack):
    root, state, _ = running_stack
    stored = objects(s3_client(state))
    assert any(key.startswith("assets/") for key in stored)
    stopped = stack(root, "down", timeout=120)
    assert stopped.returncode == 0
    assert not any(process_alive(pid) for pid in state["process_groups"].values())
    # nothing left outside the stack's directory: SeaweedFS's gRPC sockets in /tmp are gone
    assert state["sockets"]
    assert [path for path in state["sockets"] if Path(path).exists()] == []
    assert stack(root, "status", timeout=60).returncode == 1
    # `down` kills SeaweedFS a few seconds after SIGTERM: what it stored is still there, and
    # reads back the same, on its data directory started again (as the next `up` would)
    with SeaweedFS(root / "seaweedfs", stop_timeout=2) as again:
        client = again.client()
        after = objects(client)
        assert {key: after.get(key) for key in stored} == stored
        ingested = next(key for key in stored if key.startswith("assets/regina/raw_courier"))
        body = client.get_object(Bucket=BUCKET, Key=ingested)["Body"].read()
        assert len(body) > 0


def objects(client) -> dict[str, str]:
    """Every object of the stack's bucket: key -> ETag (changes with the content)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}
