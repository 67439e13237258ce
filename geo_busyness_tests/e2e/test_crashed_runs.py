"""Killed runs do not block automation: on a real Dagster daemon and webserver (`dagster dev`).

With at most 2 concurrent runs and one run per day (``dagster.local.yaml``), two runs left
STARTED by a dead process stop every sensor run for good, and one stops its day. Who ends such
a run:

* A run launched by the daemon (the landing sensor's, DefaultRunLauncher) whose worker process
  is killed: the code server that spawned the worker, which polls its children every 0.5 s
  (``_check_for_orphaned_runs`` in ``dagster/_grpc/server.py``), not run monitoring: the default
  run launcher has no worker health check (``supports_check_run_worker_health`` is False), so
  the monitoring daemon only times out STARTING and CANCELING runs and, with
  ``max_runtime_seconds``, any run.
* A run of an in-process ``dg.materialize`` (``geo-busyness run``/``demo``, killed mid-run):
  nothing in Dagster, short of ``max_runtime_seconds`` hours later. The runner marks such runs
  failed when it starts (``runner.fail_orphaned_runs``: STARTED runs whose process, the pid of
  their first engine event, is gone).

How a run's process is found: its first engine event carrying a ``pid`` (``Started process for
run (pid: N)`` of a launched run's worker, ``Executing steps in process (pid: N)`` of an
in-process run; :func:`geo_busyness.runner.run_process_id`), cross-checked with
``/proc/<pid>/cmdline`` (a launched worker is a ``multiprocessing`` spawn child of the code
server).

``test_killed_runs_are_failed_and_the_queue_drains`` fails without the runner's fix: the two
killed in-process runs stay STARTED and the sensor's runs stay QUEUED.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import dagster as dg
import pytest

from geo_busyness.runner import (
    ORPHANED_RUN_MESSAGE,
    _process_gone,
    fail_orphaned_runs,
    prepare_instance_dir,
    run_process_id,
)
from geo_busyness.stack.services import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Fixed days, whatever the date the suite runs on (GEO_BUSYNESS_END_DATE).
END_DAY = dt.date(2026, 3, 31)
ORPHAN_DAY = (END_DAY - dt.timedelta(days=4)).isoformat()  # two in-process runs killed
NEW_DAY = (END_DAY - dt.timedelta(days=3)).isoformat()  # lands while the queue is blocked
CRASH_DAYS = [(END_DAY - dt.timedelta(days=n)).isoformat() for n in (2, 1)]  # workers killed
LAST_DAY = END_DAY.isoformat()  # lands after the workers' crashes
# Enough rows that an ingestion run takes seconds: time to kill it mid-run.
PINGS_PER_DAY = 100_000
SENSOR_INTERVAL_SECONDS = 3
POLL_SECONDS = 0.2
SENSOR = {"dagster/sensor_name": "landing_zone_sensor"}
STARTED = dg.DagsterRunStatus.STARTED
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)

# A killed dg.materialize: the runner's ingestion of one day, in this process.
MATERIALIZE_DAY = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from geo_busyness.definitions import defs
    from geo_busyness.runner import materialize_days

    with dg.DagsterInstance.get() as instance:
        materialize_days([sys.argv[1]], defs, instance, log=lambda message: None)
    """
)

# A run that stays in progress until it is killed.
SLEEPING_RUN = textwrap.dedent(
    """
    import time
    import dagster as dg

    @dg.asset
    def sleeper():
        time.sleep(600)

    with dg.DagsterInstance.get() as instance:
        dg.materialize([sleeper], instance=instance)
    """
)


def wait_for(what: str, predicate, timeout: float, process=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited while waiting for {what}{tail(log)}")
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail(log)}")


def tail(log: Path | None, lines: int = 60) -> str:
    if log is None or not log.exists():
        return ""
    return ":\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def spawn(code: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def run_of_process(instance: dg.DagsterInstance, pid: int) -> dg.DagsterRun | None:
    """The STARTED run whose process is ``pid``."""
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[STARTED])):
        if run_process_id(instance, run.run_id) == pid:
            return run
    return None


def kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return records[-1].event_log_entry.dagster_event.message if records else ""


def engine_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    return [record.event_log_entry.dagster_event.message or "" for record in records]


def sensor_runs(instance: dg.DagsterInstance, day: str) -> list[dg.DagsterRun]:
    return instance.get_runs(
        filters=dg.RunsFilter(tags={**SENSOR, "dagster/partition": day}, job_name="regina__ingest")
    )


@pytest.fixture
def workspace(tmp_path):
    """DAGSTER_HOME with the shipped local instance settings, an environment pointing into
    ``tmp_path``, and the subprocesses a test starts, killed at the end."""
    home = prepare_instance_dir(tmp_path / "home")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GEO_BUSYNESS_DATA_DIR": str(tmp_path / "data"),
        "GEO_BUSYNESS_ENDPOINT_PORT": str(free_port()),
        "GEO_BUSYNESS_END_DATE": LAST_DAY,
        "GEO_BUSYNESS_SENSOR_INTERVAL_SECONDS": str(SENSOR_INTERVAL_SECONDS),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    started: list[subprocess.Popen] = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield env, instance, started, tmp_path
    for process in started:
        if process.poll() is None:
            stop_process_group(process)


@contextmanager
def dagster_dev(env: dict, root: Path):
    log = root / "dagster-dev.log"
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [BIN / "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # `dagster dev` only stops cleanly on SIGINT, which a background shell ignores.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(
            "the webserver", lambda: _answers(f"http://127.0.0.1:{port}/server_info"), 300,
            process, log,
        )  # fmt: skip
        yield process, log
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process_group(process)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def simulate_days(env: dict, staging: Path) -> subprocess.Popen:
    """Every day of the test simulated into ``staging`` (one process: each start costs
    seconds); :func:`land` moves a day into the landing zone."""
    return subprocess.Popen(
        [BIN / "geo-busyness", "simulate", "--start", ORPHAN_DAY, "--days", "5",
         "--pings-per-day", str(PINGS_PER_DAY), "--city", "regina", "--quiet"],
        cwd=REPO, env={**env, "GEO_BUSYNESS_LANDING_ZONE": str(staging)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def land(env: dict, staging: Path, *days: str) -> None:
    """The files of ``days`` appear in the landing zone at once (a directory rename)."""
    for day in days:
        target = (
            Path(env["GEO_BUSYNESS_DATA_DIR"]) / "landing" / "raw" / "city=regina" / f"dt={day}"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / "raw" / "city=regina" / f"dt={day}").rename(target)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_fail_orphaned_runs_fails_the_runs_of_dead_processes_only(workspace):
    env, instance, started, _ = workspace
    killed, alive = spawn(SLEEPING_RUN, env=env), spawn(SLEEPING_RUN, env=env)
    started += [killed, alive]
    runs = {}
    for process in (killed, alive):
        runs[process] = wait_for(
            f"the run of process {process.pid}", lambda p=process: run_of_process(instance, p.pid),
            90, process,
        )  # fmt: skip
    kill(killed.pid)
    killed.wait(timeout=30)
    # Dagster does not notice: the run of the dead process stays STARTED.
    assert status(instance, runs[killed].run_id) == STARTED

    notes: list[str] = []
    assert fail_orphaned_runs(instance, log=notes.append) == [runs[killed].run_id]
    assert status(instance, runs[killed].run_id) == dg.DagsterRunStatus.FAILURE
    assert failure_message(instance, runs[killed].run_id) == ORPHANED_RUN_MESSAGE.format(
        pid=killed.pid
    )
    assert str(killed.pid) in notes[0] and runs[killed].run_id in notes[0]
    # The live run is left alone, and a second pass changes nothing.
    assert status(instance, runs[alive].run_id) == STARTED
    assert fail_orphaned_runs(instance, log=notes.append) == []


@pytest.mark.unit
def test_a_pid_reused_by_a_younger_process_counts_as_gone():
    now = time.time()
    assert not _process_gone(os.getpid(), run_started=now)
    # this process was born long after a run that started at the epoch: pid reuse
    assert _process_gone(os.getpid(), run_started=0.0) == Path("/proc/self/stat").exists()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_runs_are_failed_and_the_queue_drains(workspace):
    env, instance, started, root = workspace

    # Declarative automation stays off: its feature runs would take turns in the 2 run slots
    # and only make this test longer. The landing sensor, the queue and the monitoring stay on.
    stop_automation = subprocess.Popen(
        [BIN / "dagster", "sensor", "stop", "automation", "-w", "workspace.yaml"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    staging = root / "staging"
    simulation = simulate_days(env, staging)
    started += [stop_automation, simulation]
    simulated, _ = simulation.communicate(timeout=300)
    assert simulation.returncode == 0, simulated[-3000:]

    # 1. Two in-process runs (dg.materialize, as `geo-busyness run` and `demo` do) of a landed
    #    day are killed mid-run: both stay STARTED, and nothing in Dagster will end them.
    land(env, staging, ORPHAN_DAY)
    killers = [spawn(MATERIALIZE_DAY, ORPHAN_DAY, env=env) for _ in range(2)]
    started += killers
    orphans = []
    for process in killers:
        run = wait_for(
            f"the in-process run of {ORPHAN_DAY} by process {process.pid}",
            lambda p=process: run_of_process(instance, p.pid), 180, process,
        )  # fmt: skip
        kill(process.pid)
        process.wait(timeout=30)
        orphans.append(run.run_id)
    assert [status(instance, run_id) for run_id in orphans] == [STARTED, STARTED], (
        "an in-process run finished before it was killed: raise PINGS_PER_DAY"
    )

    stopped, _ = stop_automation.communicate(timeout=180)
    assert "Stopped sensor automation" in stopped, stopped[-3000:]

    with dagster_dev(env, root) as (dagster, log):
        # 2. The sensor requests the landed day and a new one: both wait in the queue,
        #    behind the two dead runs (2 concurrent runs at most, one per day).
        land(env, staging, NEW_DAY)
        for day in (ORPHAN_DAY, NEW_DAY):
            wait_for(f"the sensor's run of {day}", lambda d=day: sensor_runs(instance, d), 120,
                     dagster, log)  # fmt: skip
        # five turns of the run queue (dequeue_interval_seconds of dagster.local.yaml): time
        # enough to start them if anything let it
        time.sleep(5 * instance.run_coordinator.dequeue_interval_seconds)
        # Run monitoring has looked at the dead runs (it does at the daemon's start) and left
        # them STARTED: it cannot tell a dead run from a live one of the default launcher.
        wait_for(
            "run monitoring to check the killed runs",
            lambda: all(f"Checking run {run_id}" in log.read_text() for run_id in orphans), 120,
            dagster, log,
        )  # fmt: skip
        queued = [run for day in (ORPHAN_DAY, NEW_DAY) for run in sensor_runs(instance, day)]
        assert {run.status for run in queued} == {dg.DagsterRunStatus.QUEUED}
        assert [status(instance, run_id) for run_id in orphans] == [STARTED, STARTED]

        # 3. The next `geo-busyness run` marks the dead runs failed before it starts (here on an
        #    empty landing zone, so that it does nothing else)...
        (root / "empty").mkdir()
        rerun = subprocess.run(
            [BIN / "geo-busyness", "run", "--no-train", "--landing", str(root / "empty")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = rerun.stdout[-3000:] + rerun.stderr[-3000:]
        for run_id, process in zip(orphans, killers, strict=True):
            assert status(instance, run_id) == dg.DagsterRunStatus.FAILURE, output
            assert failure_message(instance, run_id) == ORPHANED_RUN_MESSAGE.format(pid=process.pid)
            assert f"marked failed: run {run_id}" in rerun.stdout, output
        # ... and the queue drains: the sensor's runs start and ingest their days.
        for day in (ORPHAN_DAY, NEW_DAY):
            run = wait_for(
                f"the sensor's run of {day} to finish",
                lambda d=day: next(
                    (r for r in sensor_runs(instance, d) if r.status in FINISHED), None
                ), 240, dagster, log,
            )  # fmt: skip
            assert run.status == dg.DagsterRunStatus.SUCCESS, failure_message(instance, run.run_id)

        # 4. Two sensor-launched runs whose worker process is killed mid-run: the code server
        #    that spawned the workers fails them within seconds.
        land(env, staging, *CRASH_DAYS)
        crashed: dict[str, int] = {}

        def kill_started_workers():
            for day in CRASH_DAYS:
                for run in sensor_runs(instance, day):
                    if run.run_id in crashed or run.status != STARTED:
                        continue
                    pid = run_process_id(instance, run.run_id)
                    if pid is None:
                        continue
                    try:
                        command = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue  # the run ended meanwhile: it is not killed mid-run
                    assert b"multiprocessing" in command, command.replace(b"\0", b" ")
                    kill(pid)
                    crashed[run.run_id] = pid
            return len(crashed) == len(CRASH_DAYS)

        wait_for("two sensor runs to start and be killed", kill_started_workers, 180, dagster, log)
        for run_id, pid in crashed.items():
            wait_for(
                f"run {run_id} (worker {pid} killed) to fail",
                lambda r=run_id: status(instance, r) == dg.DagsterRunStatus.FAILURE, 60,
                dagster, log,
            )  # fmt: skip
            assert any(
                "was terminated by signal 9" in message
                for message in engine_messages(instance, run_id)
            ), engine_messages(instance, run_id)

        # 5. A new landing file is still ingested by the sensor.
        land(env, staging, LAST_DAY)
        run = wait_for(
            f"the sensor's run of {LAST_DAY} to finish",
            lambda: next(
                (r for r in sensor_runs(instance, LAST_DAY) if r.status in FINISHED), None
            ), 240, dagster, log,
        )  # fmt: skip
        assert run.status == dg.DagsterRunStatus.SUCCESS, failure_message(instance, run.run_id)
