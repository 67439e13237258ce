"""The production instance file, deploy/instance/dagster.yaml, against a real PostgreSQL server.

The server is a throw-away cluster on 127.0.0.1 (:class:`PostgresServer`). Without PostgreSQL's
server binaries on the machine these tests skip (Postgres is the optional production path);
binaries that are there but a server that does not start FAIL them, with the server log.
Each test (and the module's one materialized day) gets a database of its own, so the order of
the tests does not matter. The queue and retry tests ask the daemons' own decision functions
(Dagster internals, pinned by uv.lock) about runs stored in Postgres, so no daemon, no launched
process and no sleep is involved.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.tags import (
    PARENT_RUN_ID_TAG,
    PARTITION_NAME_TAG,
    RETRY_NUMBER_TAG,
    ROOT_RUN_ID_TAG,
    RUN_FAILURE_REASON_TAG,
    WILL_RETRY_TAG,
)
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import (
    filter_runs_to_should_retry,
)
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster_postgres import (
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)

from geo_busyness.assets.metadata import city_key
from geo_busyness.checks import build_checks
from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.definitions import defs
from geo_busyness.partitions import city_partitions
from geo_busyness.resources.environment import local_resources
from geo_busyness.resources.io_manager import committed_path
from geo_busyness.runner import (
    FEATURE_ASSETS,
    INGEST_ASSETS,
    LOCAL_INSTANCE_SETTINGS,
    materialize_days,
)
from geo_busyness.simulate import SimulationConfig, simulate
from geo_busyness.stack.postgres import (
    DAGSTER_PG_ENV,
    PostgresError,
    PostgresNotFound,
    PostgresServer,
)

pytestmark = pytest.mark.integration

PRODUCTION_INSTANCE = Path(__file__).resolve().parents[2] / "deploy" / "instance" / "dagster.yaml"
DAY = "2026-10-01"
CITY = DEFAULT_CITY  # the packaged catalog's only city
DATA_ASSETS = {
    *INGEST_ASSETS,
    "restaurants",
    "restaurant_clusters",
    *FEATURE_ASSETS,
}
[hourly_keys_are_unique] = [
    check
    for check in build_checks(CITY, "cities.yaml")
    if {key.name for key in check.check_keys} == {"hourly_keys_are_unique"}
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except PostgresNotFound as error:
        pytest.skip(f"no PostgreSQL server on this machine: {error}")
    except PostgresError as error:
        pytest.fail(f"PostgreSQL server did not start: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def use_production_instance(
    monkeypatch: pytest.MonkeyPatch, server: PostgresServer, home: Path
) -> dict[str, str]:
    """DAGSTER_HOME with a copy of the production file, DAGSTER_PG_* at a fresh database."""
    home.mkdir(parents=True)
    shutil.copy(PRODUCTION_INSTANCE, home / "dagster.yaml")
    database = server.create_database(f"dagster_{uuid.uuid4().hex[:12]}")
    env = {"DAGSTER_HOME": str(home), **server.env(database)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def instance(postgres, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    use_production_instance(monkeypatch, postgres, tmp_path / "dagster_home")
    with dg.DagsterInstance.get() as loaded:
        yield loaded


@dataclass
class Ingested:
    """One simulated day materialized (ingestion, restaurants, features) on the production
    instance; ``env`` points a new process at the same instance."""

    instance: dg.DagsterInstance
    env: dict[str, str]
    root: Path


@pytest.fixture(scope="module")
def ingested(postgres, tmp_path_factory) -> Iterator[Ingested]:
    root = tmp_path_factory.mktemp("postgres_pipeline")
    simulate(
        SimulationConfig(start_date=dt.date.fromisoformat(DAY), days=1, pings_per_day=2000, seed=5),
        put=local_resources(root)["landing_zone"].write,
        progress=False,
    )
    test_defs = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        resources=local_resources(root),
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        env = use_production_instance(monkeypatch, postgres, root / "dagster_home")
        with dg.DagsterInstance.get() as instance:
            materialize_days([DAY], test_defs, instance, log=lambda _: None)
            yield Ingested(instance=instance, env=env, root=root)


def test_a_server_that_cannot_start_fails_with_its_log(postgres):
    """The fixture fails (never skips) on such an error, so the message must say why."""
    taken = PostgresServer(port=postgres.port)
    with pytest.raises(PostgresError, match=r"(?s)did not start.*Address already in use"):
        taken.start()
    assert taken._base_dir is None  # its cluster directory is gone


def test_the_file_loads_as_a_postgres_instance_with_queue_limits_and_run_retries(instance):
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)

    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert queue.max_concurrent_runs == 8
    # the same one-run-per-day rule as the local instance settings
    local = yaml.safe_load(LOCAL_INSTANCE_SETTINGS.read_text())["concurrency"]["runs"]
    assert (
        queue.tag_concurrency_limits
        == local["tag_concurrency_limits"]
        == [{"key": PARTITION_NAME_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    )

    assert instance.run_retries_enabled
    assert instance.run_retries_max_retries == 2
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_start_timeout_seconds == 180
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.get_sensor_settings()["use_threads"] is True
    assert instance.telemetry_enabled is False


def test_the_file_holds_no_connection_value_only_environment_variables():
    database = yaml.safe_load(PRODUCTION_INSTANCE.read_text())["storage"]["postgres"]
    assert database["postgres_db"] == {
        **{field: {"env": variable} for field, variable in DAGSTER_PG_ENV.items()},
        "scheme": "postgresql+psycopg2",  # the driver dagster-postgres installs
    }


def test_runs_and_materializations_are_stored_in_postgres(ingested, postgres):
    instance = ingested.instance
    runs = instance.get_runs()
    assert len(runs) == 3  # ingestion of the day, restaurants, features of the day
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert sorted(run.tags.get(PARTITION_NAME_TAG, "-") for run in runs) == ["-", DAY, DAY]

    for asset in DATA_ASSETS:
        key = city_key(CITY, asset)
        assert instance.get_latest_materialization_event(key) is not None, asset
    [clean] = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=city_key(CITY, "clean_courier_pings"), asset_partitions=[DAY]
        ),
        limit=1,
    ).records
    rows = clean.asset_materialization.metadata["dagster/row_count"].value
    written = pd.read_parquet(
        committed_path(ingested.root / "assets", [CITY.key, "clean_courier_pings"], DAY)
    )
    assert rows == len(written) > 0

    database = ingested.env[DAGSTER_PG_ENV["db_name"]]
    with postgres.connect(database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        assert dict(cursor.fetchall()) == {run.run_id: "SUCCESS" for run in runs}
        cursor.execute(
            "SELECT DISTINCT asset_key, partition FROM event_logs"
            " WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        stored = {(tuple(json.loads(key)), partition) for key, partition in cursor.fetchall()}
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION'"
        )
        [[check_evaluations]] = cursor.fetchall()
    partitioned = {*INGEST_ASSETS, *FEATURE_ASSETS}
    assert stored == {
        (tuple(city_key(CITY, a).path), DAY if a in partitioned else None) for a in DATA_ASSETS
    }
    assert check_evaluations > 0


def test_a_new_process_on_the_same_file_sees_the_same_runs(ingested):
    """Durability is the point of Postgres: a fresh process (a restarted webserver or daemon)
    loads the instance from the file and finds every run and materialization."""
    program = (
        "import json, dagster as dg\n"
        "with dg.DagsterInstance.get() as instance:\n"
        f"    key = dg.AssetKey({city_key(CITY, 'busyness_features').path!r})\n"
        "    event = instance.get_latest_materialization_event(key)\n"
        "    print(json.dumps({\n"
        "        'storage': type(instance.run_storage).__name__,\n"
        "        'runs': {run.run_id: run.status.value for run in instance.get_runs()},\n"
        "        'features_run': event.run_id,\n"
        "    }))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, **ingested.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    instance = ingested.instance
    assert seen["storage"] == "PostgresRunStorage"
    assert seen["runs"] == {run.run_id: run.status.value for run in instance.get_runs()}
    features = instance.get_latest_materialization_event(city_key(CITY, "busyness_features"))
    assert seen["features_run"] == features.run_id


JOB = "__ASSET_JOB"
ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=RegisteredCodeLocationOrigin(location_name="geo_busyness"),
        repository_name="__repository__",
    ),
    job_name=JOB,
)


def _run(
    instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str]
) -> dg.DagsterRun:
    """A run record as the webserver or a sensor would store it (no process behind it)."""
    return instance.add_run(
        dg.DagsterRun(
            job_name=JOB,
            run_id=str(uuid.uuid4()),
            status=status,
            tags=tags,
            remote_job_origin=ORIGIN,
            root_run_id=tags.get(ROOT_RUN_ID_TAG),
            parent_run_id=tags.get(PARENT_RUN_ID_TAG),
        )
    )


def test_the_queue_starts_at_most_eight_runs_and_one_per_day(instance):
    """The daemon's choice of queued runs to launch, over runs stored in Postgres: one day
    already running; queued in order: that day, then days 1-9 with day 1 twice."""
    days = [f"2026-10-{day:02d}" for day in range(1, 11)]
    _run(instance, dg.DagsterRunStatus.STARTED, {PARTITION_NAME_TAG: days[0]})
    order = [days[0], days[1], days[1], *days[2:]]
    queued = [_run(instance, dg.DagsterRunStatus.QUEUED, {PARTITION_NAME_TAG: d}) for d in order]

    chosen = QueuedRunCoordinatorDaemon(interval_seconds=5)._get_runs_to_dequeue(
        instance, instance.get_concurrency_config(), fixed_iteration_time=None
    )

    # day 0 is running, the second day-1 run waits for the first; 8 - 1 running = 7 slots
    expected = [queued[1], *queued[3:]][:7]
    assert [run.run_id for run in chosen] == [run.run_id for run in expected]
    assert [run.tags[PARTITION_NAME_TAG] for run in chosen] == days[1:8]


def test_only_runs_whose_process_died_are_retried_at_most_twice(instance, tmp_path):
    """A blocking check that fails (like a refused model candidate) fails its run for good; a
    run whose process died is retried, twice, then left failed."""

    @dg.asset(key=city_key(CITY, "hex_hourly_busyness"), partitions_def=city_partitions(CITY))
    def duplicated_hourly() -> pd.DataFrame:
        hour = pd.Timestamp(f"{DAY}T12:00:00Z")
        return pd.DataFrame({"h3_cell": ["872f5a32cffffff"] * 2, "hour_start": [hour, hour]})

    refused = dg.materialize(
        [duplicated_hourly, hourly_keys_are_unique],
        partition_key=DAY,
        instance=instance,
        resources=local_resources(tmp_path),
        raise_on_error=False,
    )
    assert not refused.success
    [evaluation] = refused.get_asset_check_evaluations()
    assert (evaluation.check_name, evaluation.passed) == ("hourly_keys_are_unique", False)
    check_failed = instance.get_run_by_id(refused.run_id)
    assert check_failed.tags[RUN_FAILURE_REASON_TAG] == RunFailureReason.STEP_FAILURE.value
    assert check_failed.tags[WILL_RETRY_TAG] == "false"

    # How a run's death is reported: the code server when the run process exits unfinished
    # (no failure data), run monitoring when the process never came up (start timeout).
    deaths = [None, JobFailureData(error=None, failure_reason=RunFailureReason.START_TIMEOUT), None]
    attempts: list[dg.DagsterRun] = []
    for number, death in enumerate(deaths):
        tags = {PARTITION_NAME_TAG: DAY}
        if attempts:  # what the retry daemon gives the run it launches
            tags |= {
                ROOT_RUN_ID_TAG: attempts[0].run_id,
                PARENT_RUN_ID_TAG: attempts[-1].run_id,
                RETRY_NUMBER_TAG: str(number),
            }
        attempt = _run(instance, dg.DagsterRunStatus.STARTED, tags)
        instance.report_run_failed(attempt, "run process exited unexpectedly", death)
        attempts.append(attempt)

    failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    retried = {run.run_id for run in filter_runs_to_should_retry(failed, instance)}
    assert retried == {attempts[0].run_id, attempts[1].run_id}
    assert instance.get_run_by_id(attempts[2].run_id).tags[WILL_RETRY_TAG] == "false"
