"""``geo-busyness stack``: the production shape on one machine, with real services on loopback.

``up`` starts, each in its own process group and logging under ``<root>/logs``:

* SeaweedFS (S3): bucket ``geo-busyness`` holds the landing zone, the asset storage, the drift
  reports and the MLflow artifacts;
* ``mlflow server``: SQLite backend store, artifacts proxied by the server into the bucket (so
  clients need no S3 credentials for them);
* ``dagster dev``: webserver + daemon with every sensor running, in the ``stack`` environment;

then seeds the landing zone with simulated days (once: an existing landing zone is kept). The
sensors ingest them, automation featurizes them, ``first_model_sensor`` trains the first model,
and its promotion redeploys the local endpoint. State (ports, process groups, environment) is
in ``<root>/stack.json``; ``down`` stops everything it names, also after ``up`` was killed.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geo_busyness.resources.settings import DEFINITIONS_MODULE
from geo_busyness.stack.services import (
    LOOPBACK,
    SeaweedFS,
    SeaweedFSError,
    free_port,
    remove_sockets,
)

STATE_FILE = "stack.json"
ENV_FILE = "env.sh"  # `source` it to point a shell's geo-busyness commands at the stack
BUCKET = "geo-busyness"
DEFAULT_PORTS = {"dagster": 3000, "mlflow": 5000, "s3": 8333, "endpoint": 8080}
# Stopped in this order: Dagster first (no run may start against a stopped store), S3 last.
STOP_ORDER = ("dagster", "mlflow", "seaweedfs")
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# SeaweedFS left alone stops in 15 s: its filer's graceful gRPC stop waits for the S3 gateway's
# metadata subscription, which ends only when that wait times out. What it acknowledged is in
# its volume and metadata files by then (test_stack reads the objects back after `down`), so
# `down` gives it a few seconds, then SIGKILL.
SEAWEEDFS_STOP_TIMEOUT_S = 3.0


class StackError(RuntimeError):
    """The stack cannot start, or a service of it failed; the message says which and why."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state and how it starts. A port of 0 means a free one."""

    root: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    seed_days: int = 28
    pings_per_day: int = 10_000
    seed_end: dt.date | None = None  # default: yesterday (UTC), the latest complete day
    fresh: bool = False


@dataclass
class StackState:
    """What ``down`` and ``status`` need: process groups, ports, URLs and the environment."""

    root: str
    process_groups: dict[str, int]
    ports: dict[str, int]
    urls: dict[str, str]
    env: dict[str, str]
    logs: dict[str, str]
    seeded: str
    # SeaweedFS's gRPC sockets in /tmp: its killed process cannot remove them, `down` does
    sockets: list[str] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.root) / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2))
        temporary.replace(path)

    @classmethod
    def load(cls, root: Path) -> StackState | None:
        path = root / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, i.e. exited but not reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _resolve_ports(requested: dict[str, int]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in DEFAULT_PORTS:
        port = requested.get(name, DEFAULT_PORTS[name])
        if port == 0:
            port = free_port()
            while port in ports.values():
                port = free_port()
        elif not port_free(port):
            raise StackError(
                f"port {port} ({name}) on {LOOPBACK} is in use: stop what uses it "
                f"(`geo-busyness stack down` if it is an earlier stack) or pass "
                f"--{name}-port (0 picks a free port)"
            )
        ports[name] = port
    return ports


def wait_http(url: str, process: subprocess.Popen, name: str, log: Path) -> None:
    """Poll ``url`` until it answers 200, failing early (with the log tail) if ``process`` exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{name} exited with code {process.returncode}; {_tail(log)}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise StackError(f"{name} did not answer {url} within {STARTUP_TIMEOUT_S:.0f} s; {_tail(log)}")


def _tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"no log at {log}"
    return f"last lines of {log}:\n" + "\n".join(text)


def console_tool(name: str) -> str:
    """A console script of this environment (next to ``python``), else from ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} nor on PATH (uv sync)")
    return found


def start_service(
    command: list[str], env: dict[str, str], log: Path, cwd: Path
) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole by `down`
            # dagster dev shuts down cleanly on SIGINT; a shell that started us may ignore it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def stack_env(state_root: Path, ports: dict[str, int], s3: SeaweedFS) -> dict[str, str]:
    """The variables that put the platform (and a user's shell) in the ``stack`` environment."""
    mlflow_url = f"http://{LOOPBACK}:{ports['mlflow']}"
    return {
        **s3.env,
        "GEO_BUSYNESS_ENV": "stack",
        "GEO_BUSYNESS_BUCKET": BUCKET,
        "GEO_BUSYNESS_S3_ENDPOINT_URL": s3.endpoint_url,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "GEO_BUSYNESS_MLFLOW_UI_URL": mlflow_url,
        "GEO_BUSYNESS_ENDPOINT_PORT": str(ports["endpoint"]),
        # Local state that is not in S3: endpoint bundles and server state.
        "GEO_BUSYNESS_DATA_DIR": str(state_root / "local"),
        "DAGSTER_HOME": str(state_root / "dagster_home"),
    }


def running_state(root: Path) -> StackState | None:
    """The saved state if any of its processes still runs."""
    state = StackState.load(root)
    if state and any(process_alive(pid) for pid in state.process_groups.values()):
        return state
    return None


def up(config: StackConfig, say: Callable[[str], None] = print) -> StackState:
    """Start SeaweedFS, the MLflow server and Dagster, seed the landing zone; return the state.

    The services keep running after this returns; :func:`down` stops them."""
    root = config.root.resolve()
    running = running_state(root)
    if running:
        raise StackError(
            f"a stack is already running from {root} (Dagster {running.urls['dagster']}); "
            "`geo-busyness stack down` stops it"
        )
    if config.fresh and root.exists():
        shutil.rmtree(root)
    for directory in ("logs", "local"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    ports = _resolve_ports(config.ports)
    logs = {name: str(root / "logs" / f"{name}.log") for name in ("mlflow", "dagster")}
    state = StackState(
        root=str(root), process_groups={}, ports=ports, urls={}, env={}, logs=logs, seeded=""
    )
    try:
        s3 = SeaweedFS(root / "seaweedfs", s3_port=ports["s3"], die_with_parent=False)
        try:
            s3.start()
        except SeaweedFSError as error:
            raise StackError(f"SeaweedFS did not start: {error}") from error
        atexit.unregister(s3.stop)  # the stack outlives this process; `down` stops it
        state.process_groups["seaweedfs"] = s3.pid
        state.logs["seaweedfs"] = str(s3.log_path)
        state.sockets = s3.grpc_sockets
        state.save()
        s3.make_bucket(BUCKET)
        say(f"  S3 (SeaweedFS)  {s3.endpoint_url}  bucket {BUCKET}")
        env = stack_env(root, ports, s3)
        state.env = env
        from geo_busyness.runner import prepare_instance_dir

        prepare_instance_dir(Path(env["DAGSTER_HOME"]))

        mlflow = start_mlflow_server(
            root / "mlflow", ports["mlflow"], s3, BUCKET, Path(logs["mlflow"])
        )
        state.process_groups["mlflow"] = mlflow.pid
        state.save()
        # Seeding needs only S3: it runs while the MLflow server starts.
        state.seeded = _seed(config, env, say)

        dagster_url = f"http://{LOOPBACK}:{ports['dagster']}"
        dagster = start_service(
            [
                console_tool("dagster"),
                "dev",
                "-m",
                DEFINITIONS_MODULE,
                "-h",
                LOOPBACK,
                "-p",
                str(ports["dagster"]),
            ],
            {**os.environ, **env},
            Path(logs["dagster"]),
            root,
        )
        state.process_groups["dagster"] = dagster.pid
        state.save()
        wait_http(
            f"{env['MLFLOW_TRACKING_URI']}/health", mlflow, "mlflow server", Path(logs["mlflow"])
        )
        state.urls["mlflow"] = env["MLFLOW_TRACKING_URI"]
        say(f"  MLflow          {state.urls['mlflow']}  (artifacts in s3://{BUCKET}/mlflow)")
        wait_http(f"{dagster_url}/server_info", dagster, "dagster dev", Path(logs["dagster"]))
        state.urls["dagster"] = dagster_url
        state.urls["endpoint"] = f"http://{LOOPBACK}:{ports['endpoint']}"
        state.save()
        (root / ENV_FILE).write_text(
            "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
        )
        say(f"  Dagster         {dagster_url}  (webserver + daemon, sensors on)")
        say(f"  model endpoint  {state.urls['endpoint']}  (once the first model is deployed)")
        return state
    except BaseException:
        down(root, say=lambda _: None)
        raise


MLFLOW_SERVER_SETTINGS = {
    # MLflow 3's server also starts a job runner (huey consumers) for GenAI jobs nothing here
    # submits: 5 more processes, ~1.3 GB and half a core while idle (seen in CI). Off.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def start_mlflow_server(
    store_dir: Path, port: int, s3: SeaweedFS, bucket: str, log: Path
) -> subprocess.Popen:
    """``mlflow server`` on loopback: SQLite store in ``store_dir``, artifacts proxied into
    ``s3://<bucket>/mlflow`` (clients upload and download through the server). Not waited for:
    ``wait_http(<url>/health, ...)`` is."""
    store_dir.mkdir(parents=True, exist_ok=True)
    return start_service(
        [
            console_tool("mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store_dir / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{bucket}/mlflow",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        {
            **os.environ,
            **s3.env,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
            **MLFLOW_SERVER_SETTINGS,
        },
        log,
        store_dir,
    )


def _seed(config: StackConfig, env: dict[str, str], say: Callable[[str], None]) -> str:
    """Simulated days into the stack's landing zone with the user's own command
    (``geo-busyness simulate``); a landing zone that already holds files is kept."""
    if config.seed_days <= 0:
        return "none"
    end = config.seed_end or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    start = end - dt.timedelta(days=config.seed_days - 1)
    seeded = subprocess.run(
        [
            console_tool("geo-busyness"),
            "simulate",
            "--start",
            start.isoformat(),
            "--days",
            str(config.seed_days),
            "--pings-per-day",
            str(config.pings_per_day),
            "--if-empty",
            "--quiet",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if seeded.returncode != 0:
        raise StackError(f"seeding the landing zone failed: {seeded.stderr.strip()[-2000:]}")
    say(f"  landing zone    {seeded.stdout.strip()}")
    return f"{start}..{end}"


def stop_group(pid: int, first_signal: int, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Signal process group ``pid``, wait up to ``timeout``, SIGKILL what is left; whether it was
    running."""
    if not process_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, first_signal)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def down(root: Path, say: Callable[[str], None] = print) -> list[str]:
    """Stop the model endpoint and every service of the stack in ``root``; what was stopped."""
    state = StackState.load(root.resolve())
    if state is None:
        say(f"no stack state in {root}")
        return []
    stopped = []
    if state.env:
        from geo_busyness.resources.deployment import LocalEndpointTarget

        endpoint = LocalEndpointTarget(
            port=state.ports["endpoint"],
            state_dir=str(Path(state.env["GEO_BUSYNESS_DATA_DIR"]) / "endpoint"),
        )
        if endpoint.stop():
            stopped.append("endpoint")
    for name in STOP_ORDER:
        pid = state.process_groups.get(name)
        first_signal = signal.SIGINT if name == "dagster" else signal.SIGTERM
        timeout = SEAWEEDFS_STOP_TIMEOUT_S if name == "seaweedfs" else STOP_TIMEOUT_S
        if pid and stop_group(pid, first_signal, timeout):
            stopped.append(name)
    remove_sockets(state.sockets)
    (Path(state.root) / STATE_FILE).unlink(missing_ok=True)
    say(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return stopped


def serve_until_interrupted(state: StackState, say: Callable[[str], None] = print) -> int:
    """Keep the stack up until SIGINT / SIGTERM or until one of its services dies; then
    :func:`down`. Exit status 1 if a service died."""
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))
    dead: list[str] = []
    while not stop and not dead:
        time.sleep(1)
        dead = [name for name, pid in state.process_groups.items() if not process_alive(pid)]
    if dead:
        say(f"stack: {', '.join(dead)} stopped unexpectedly; see {Path(state.root) / 'logs'}")
    down(Path(state.root), say)
    return 1 if dead else 0
