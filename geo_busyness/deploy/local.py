"""Deploy a model bundle as a local server process behind a fixed address, replacing the old one
without failed requests.

Layout: a small front proxy (:mod:`geo_busyness.deploy.proxy`) owns the fixed ``host:port``
clients use; each model server runs on a private loopback port behind it. A deployment

1. starts the new server on a free port and waits for ``GET /ping`` (process exit = failure),
2. sends the smoke request straight to it (the process that will serve, before any client
   reaches it),
3. switches the proxy to it and checks one request through the fixed address,
4. drains the old server in the proxy (running requests finish) and stops it (SIGTERM, then
   SIGKILL after ``stop_timeout_seconds``).

Any failure before the old server is stopped kills the new one, leaves (or puts back) the old
one behind the proxy and raises :class:`DeploymentFailed`: that is the rollback.

A **supervisor** process (:mod:`geo_busyness.deploy.supervisor`, started by the first deploy)
checks both processes every ``supervisor_interval_seconds``: a dead model server is started
again from the same bundle on a new private port (ready once ``GET /ping`` answers; the bundle
passed its smoke test when it was deployed) and the proxy switched to it; a dead proxy is
started again on the fixed address. Each restart is a line of ``restarts.jsonl``, which
``status()`` and the next deployment report. The supervisor takes the deploy lock for each
pass (never waiting for it), so it never races a deployment or a stop.

The state (proxy and server pid, port, model version, bundle, start time) lives in
``<state_dir>/endpoint.json`` so a later process (another Dagster run) can replace or stop
the server; a dead or reused pid makes that state stale, and stale parts are started afresh.
Deployments in ``state_dir`` are serialised with a lock file. Servers and the proxy run in
their own sessions so they outlive the process that deployed them. Linux and macOS (pid
reuse is detected on Linux only, through the process start time).

A multi-city bundle deploys the same way; the state and ``status()`` keep each city's model
name and version in ``members`` next to the combined labels.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geo_busyness.deploy.common import (
    BundleManifest,
    DeploymentFailed,
    DeploymentRecord,
    SmokeTest,
    compact_stamp,
    slug,
    utc_now,
)
from geo_busyness.deploy.proxy import UNIX_SOCKET_PATH_MAX, control_request

STATE_FILE = "endpoint.json"
LOCK_FILE = "deploy.lock"
CONTROL_SOCKET = "proxy.sock"
SUPERVISOR_CONFIG = "supervisor.json"
RESTARTS_FILE = "restarts.jsonl"
LOG_DIR = "logs"
KEEP_SERVER_LOGS = 20
# Placeholders: {python} {model_dir} {host} {port}.
DEFAULT_SERVER_COMMAND: tuple[str, ...] = (
    "{python}",
    "-m",
    "geo_busyness.serving",
    "--model-dir",
    "{model_dir}",
    "--host",
    "{host}",
    "--port",
    "{port}",
)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LocalEndpointConfig:
    """Where clients connect, where state lives, how a server is started, how long to wait."""

    state_dir: Path
    host: str = LOOPBACK
    port: int = 8080
    server_command: Sequence[str] = DEFAULT_SERVER_COMMAND
    server_env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_seconds: float = 120.0
    request_timeout_seconds: float = 30.0
    drain_timeout_seconds: float = 30.0
    stop_timeout_seconds: float = 30.0
    lock_timeout_seconds: float = 600.0
    supervise: bool = True
    supervisor_interval_seconds: float = 0.5

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        """What the supervisor needs to start parts again; ``server_env`` stays out of the file
        (it may hold secrets) and reaches the supervisor through its environment instead."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("server_env", "state_dir")}
        return {**data, "server_command": list(self.server_command)}

    @classmethod
    def from_json(cls, state_dir: Path, data: Mapping[str, Any]) -> LocalEndpointConfig:
        return cls(state_dir=state_dir, **{**data, "server_command": tuple(data["server_command"])})


@dataclass(frozen=True)
class ProcessState:
    """A process this target started: enough to find it again and tell it from a reused pid."""

    pid: int
    started_at: str
    start_ticks: int | None
    log_path: str


@dataclass(frozen=True)
class ServerState:
    process: ProcessState
    port: int
    model_name: str
    model_version: str
    bundle_dir: str
    # {city: {"model_name", "model_version"}} of a multi-city bundle (absent in older states)
    members: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyState:
    process: ProcessState
    host: str
    port: int
    control_socket: str


@dataclass(frozen=True)
class EndpointState:
    proxy: ProxyState | None = None
    server: ServerState | None = None
    supervisor: ProcessState | None = None

    @property
    def empty(self) -> bool:
        return self.proxy is None and self.server is None and self.supervisor is None

    def to_json(self) -> dict[str, Any]:
        def encode(value: Any) -> Any:
            if value is None:
                return None
            return {
                k: encode(v) if hasattr(v, "__dataclass_fields__") else v
                for k, v in value.__dict__.items()
            }

        return {
            "proxy": encode(self.proxy),
            "server": encode(self.server),
            "supervisor": encode(self.supervisor),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EndpointState:
        proxy = data.get("proxy")
        server = data.get("server")
        supervisor = data.get("supervisor")
        return cls(
            supervisor=ProcessState(**supervisor) if supervisor else None,
            proxy=ProxyState(**{**proxy, "process": ProcessState(**proxy["process"])})
            if proxy
            else None,
            server=ServerState(**{**server, "process": ProcessState(**server["process"])})
            if server
            else None,
        )


@dataclass(frozen=True)
class LocalEndpointStatus:
    """What ``status()`` found; ``problems`` names stale or dead parts; ``members`` the
    per-city models of a multi-city bundle."""

    url: str
    serving: bool
    model_name: str | None
    model_version: str | None
    bundle_dir: str | None
    server_pid: int | None
    server_port: int | None
    proxy_pid: int | None
    started_at: str | None
    problems: tuple[str, ...] = ()
    members: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    supervisor_pid: int | None = None
    # the supervisor's restarts since the last deployment, oldest first
    restarts: tuple[Mapping[str, Any], ...] = ()


# ---------------------------------------------------------------------- processes

_children: dict[int, subprocess.Popen] = {}  # reaped here so a dead child is not a zombie
_HAVE_PROC = Path("/proc/self/stat").exists()
# Loopback calls must never go through an HTTP(S)_PROXY from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks (Linux), to tell our process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(process: ProcessState) -> bool:
    """True if ``process`` still runs (not a zombie, not another process with the same pid)."""
    child = _children.get(process.pid)
    if child is not None and child.poll() is not None:
        return False
    if child is None:  # started by an earlier process that exited: init reaps it, or we do
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(process.pid, os.WNOHANG)
    stat_path = Path(f"/proc/{process.pid}/stat")
    if _HAVE_PROC:
        try:
            stat = stat_path.read_text()
        except OSError:
            return False
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return False
        return process.start_ticks is None or int(fields[19]) == process.start_ticks
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(command: Sequence[str], log_path: Path, env: Mapping[str, str]) -> ProcessState:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            child = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # own group: outlives the deploying process, stopped whole
            )
        except OSError as error:
            raise DeploymentFailed(f"cannot start {command[0]!r}: {error}") from None
    _children[child.pid] = child
    return ProcessState(
        pid=child.pid,
        started_at=utc_now(),
        start_ticks=_start_ticks(child.pid),
        log_path=str(log_path),
    )


def stop_process(process: ProcessState, timeout: float) -> None:
    """SIGTERM the process group (graceful: running requests finish), SIGKILL if it lingers."""
    if not process_alive(process):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # also children the server left in its group
    deadline = time.monotonic() + 10
    while process_alive(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = _children.pop(process.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)


def _both_alive(*processes: ProcessState) -> bool:
    return all(process_alive(process) for process in processes)


def _exit_reason(process: ProcessState) -> str:
    """How a dead process ended, as far as this process can tell."""
    child = _children.get(process.pid)
    code = child.returncode if child is not None else None
    if code is None:
        return "exited (not a child of the supervisor: exit status unknown)"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


def log_tail(path: str | Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(text[-lines:]) or "<empty log>"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_request(url: str, body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of a GET, or a JSON POST when ``body`` is given; HTTP errors included."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# ---------------------------------------------------------------------- the target


class LocalEndpoint:
    """The local deployment target: ``deploy()``, ``status()``, ``stop()`` on one state dir."""

    target_name = "local"

    def __init__(self, config: LocalEndpointConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).expanduser().resolve()

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    # ------------------------------------------------------------------ state file
    def read_state(self) -> EndpointState:
        try:
            return EndpointState.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return EndpointState()
        except (ValueError, TypeError, KeyError) as error:
            raise DeploymentFailed(
                f"endpoint state {self.state_path} is unreadable ({error}); stop the processes "
                "it names by hand and delete it"
            ) from None

    def write_state(self, state: EndpointState) -> None:
        """Atomic replace: a reader never sees half a file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if state.empty:
            self.state_path.unlink(missing_ok=True)
            return
        partial = self.state_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(state.to_json(), indent=2) + "\n")
        os.replace(partial, self.state_path)

    @contextlib.contextmanager
    def _locked(self, wait: bool = True) -> Iterator[bool]:
        """One deployment, stop or supervision pass at a time per state dir, across processes;
        with ``wait=False`` yields False at once when someone else holds the lock."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / LOCK_FILE, "a+") as lock:
            deadline = time.monotonic() + self.config.lock_timeout_seconds
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                    if time.monotonic() > deadline:
                        raise DeploymentFailed(
                            f"another deployment in {self.state_dir} still holds "
                            f"{LOCK_FILE} after {self.config.lock_timeout_seconds:.0f}s"
                        ) from None
                    time.sleep(0.1)
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _live(self, state: EndpointState) -> tuple[EndpointState, list[str]]:
        """``state`` without its dead parts, and what was dead."""
        problems = []
        proxy, server, supervisor = state.proxy, state.server, state.supervisor
        if proxy is not None and not process_alive(proxy.process):
            problems.append(f"proxy pid {proxy.process.pid} is not running")
            proxy = None
        if server is not None and not process_alive(server.process):
            problems.append(
                f"server pid {server.process.pid} (model {server.model_version}) is not running"
            )
            server = None
        if supervisor is not None and not process_alive(supervisor):
            supervisor = None
        if self.config.supervise and supervisor is None and (proxy or server):
            problems.append(
                "no supervisor runs: a dead server or proxy is not restarted until the next deploy"
            )
        return EndpointState(proxy=proxy, server=server, supervisor=supervisor), problems

    # ------------------------------------------------------------------ public API
    def status(self) -> LocalEndpointStatus:
        """What serves at the fixed address now, checked against the processes, not just the file."""
        state, problems = self._live(self.read_state())
        serving = False
        if state.proxy is not None:
            try:
                answer = control_request(state.proxy.control_socket, {"op": "status"}, timeout=5)
                expected = f"{LOOPBACK}:{state.server.port}" if state.server else None
                serving = state.server is not None and answer.get("upstream") == expected
                if state.server is not None and not serving:
                    problems.append(f"proxy forwards to {answer.get('upstream')}, not {expected}")
            except (OSError, ValueError) as error:
                problems.append(f"proxy control socket does not answer: {error}")
        elif state.server is not None:
            problems.append("the server runs but no proxy holds the fixed address")
        server = state.server
        return LocalEndpointStatus(
            url=self.config.url,
            serving=serving,
            model_name=server.model_name if server else None,
            model_version=server.model_version if server else None,
            bundle_dir=server.bundle_dir if server else None,
            server_pid=server.process.pid if server else None,
            server_port=server.port if server else None,
            proxy_pid=state.proxy.process.pid if state.proxy else None,
            started_at=server.process.started_at if server else None,
            problems=tuple(problems),
            members=dict(server.members) if server else {},
            supervisor_pid=state.supervisor.pid if state.supervisor else None,
            restarts=tuple(self.restarts()),
        )

    def restarts(self) -> list[dict[str, Any]]:
        """The supervisor's restarts (and failed attempts) since the last deployment."""
        try:
            lines = (self.state_dir / RESTARTS_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def _log_restart(self, event: dict[str, Any]) -> None:
        with open(self.state_dir / RESTARTS_FILE, "a") as log:
            log.write(json.dumps({"at": utc_now(), **event}) + "\n")

    def stop(self) -> bool:
        """Stop the supervisor, the server and the proxy and forget them; False if nothing ran."""
        with self._locked():
            state, _problems = self._live(self.read_state())
            if state.supervisor is not None:  # first, or it would start the others again
                stop_process(state.supervisor, self.config.stop_timeout_seconds)
            # Proxy next: no new requests, and its pooled connections no longer keep the
            # server's graceful shutdown waiting.
            if state.proxy is not None:
                self._shutdown_proxy(state.proxy)
            if state.server is not None:
                stop_process(state.server.process, self.config.stop_timeout_seconds)
            self.write_state(EndpointState())
            return state.server is not None or state.proxy is not None

    def deploy(self, bundle_dir: str | Path, smoke: SmokeTest) -> DeploymentRecord:
        """Put ``bundle_dir`` behind the fixed address; on failure the previous model keeps serving."""
        manifest = BundleManifest.read(bundle_dir)
        smoke = smoke.for_bundle(manifest)
        with self._locked():
            state, _stale = self._live(self.read_state())
            restarts = self.restarts()
            if state.proxy is None:
                state = replace(state, proxy=self._start_proxy())
                self.write_state(state)
            elif (state.proxy.host, state.proxy.port) != (self.config.host, self.config.port):
                raise DeploymentFailed(
                    f"the endpoint in {self.state_dir} listens on {state.proxy.host}:"
                    f"{state.proxy.port}, not {self.config.host}:{self.config.port}; stop it "
                    "first or use another state_dir",
                )
            assert state.proxy is not None
            try:
                new_server = self._start_checked_server(manifest, smoke)
                self._switch_to(state, new_server, smoke)
            except BaseException:
                if state.server is None:  # nothing to serve: leave nothing running
                    if state.supervisor is not None:
                        stop_process(state.supervisor, self.config.stop_timeout_seconds)
                    self._shutdown_proxy(state.proxy)
                    self.write_state(EndpointState())
                raise
            self.write_state(replace(state, server=new_server))
            if state.server is not None:
                self._retire(state.proxy, state.server)
            supervisor = self._ensure_supervisor(state.supervisor)
            self.write_state(replace(state, server=new_server, supervisor=supervisor))
            (self.state_dir / RESTARTS_FILE).unlink(missing_ok=True)  # counted from this deploy
            self._prune_logs()
        return DeploymentRecord(
            target=self.target_name,
            address=self.config.url,
            model_name=manifest.model_name,
            model_version=manifest.model_version,
            bundle_dir=str(manifest.bundle_dir),
            deployed_at=utc_now(),
            previous_model_version=state.server.model_version if state.server else None,
            details={
                "server_pid": new_server.process.pid,
                "server_port": new_server.port,
                "proxy_pid": state.proxy.process.pid,
                "supervisor_pid": supervisor.pid if supervisor else None,
                "state_file": str(self.state_path),
                "server_log": new_server.process.log_path,
                "restarts_since_previous_deploy": restarts,
            },
            members=dict(manifest.members),
        )

    def heal(self) -> list[dict[str, Any]] | None:
        """One supervision pass: start a dead server or proxy again and switch the proxy to the
        server; the restarts made (or tried), or None when this process is no longer the
        endpoint's supervisor (stopped, or replaced) and should exit."""
        with self._locked(wait=False) as held:
            if not held:  # a deployment or stop is under way: it owns the processes now
                return []
            state = self.read_state()
            if state.supervisor is None or state.supervisor.pid != os.getpid():
                return None
            events: list[dict[str, Any]] = []
            proxy, server = state.proxy, state.server
            if server is not None and not process_alive(server.process):
                event = {"part": "server", "pid": server.process.pid, "model": server.model_version}
                event["reason"] = _exit_reason(server.process)
                try:
                    server = self._restart_server(server)
                    events.append({**event, "ok": True, "new_pid": server.process.pid})
                except DeploymentFailed as error:
                    events.append({**event, "ok": False, "error": error.reason})
            if proxy is not None and not process_alive(proxy.process):
                event = {"part": "proxy", "pid": proxy.process.pid}
                event["reason"] = _exit_reason(proxy.process)
                # a live server is forwarded to from the first request (no 503 in between)
                live = server if server is not None and process_alive(server.process) else None
                try:
                    proxy = self._start_proxy(upstream_port=live.port if live else None)
                    events.append({**event, "ok": True, "new_pid": proxy.process.pid})
                except DeploymentFailed as error:
                    events.append({**event, "ok": False, "error": error.reason})
            restarted = any(event["ok"] for event in events)
            if restarted and proxy and server and _both_alive(proxy.process, server.process):
                self._control(proxy, {"op": "switch", "upstream": f"{LOOPBACK}:{server.port}"})
                if state.server is not None and state.server.port != server.port:
                    # forget the dead server (and its pooled connections)
                    old = f"{LOOPBACK}:{state.server.port}"
                    self._control(proxy, {"op": "drain", "upstream": old, "timeout": 0})
            if restarted:  # a quiet pass (every 0.5 s) rewrites nothing
                self.write_state(replace(state, proxy=proxy, server=server))
            for event in events:
                self._log_restart(event)
            return events

    def _ensure_supervisor(self, current: ProcessState | None) -> ProcessState | None:
        """The running supervisor, or a new one (with the config it needs); None if disabled."""
        if not self.config.supervise:
            if current is not None:
                stop_process(current, self.config.stop_timeout_seconds)
            return None
        config_path = self.state_dir / SUPERVISOR_CONFIG
        partial = config_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
        os.replace(partial, config_path)
        if current is not None and process_alive(current):
            return current  # it reads the config file again on every pass
        command = [sys.executable, "-m", "geo_busyness.deploy.supervisor", str(self.state_dir)]
        return _spawn(command, self.state_dir / LOG_DIR / "supervisor.log", self.config.server_env)

    # ------------------------------------------------------------------ steps
    def _control(self, proxy: ProxyState, command: dict[str, Any], timeout: float = 10) -> dict:
        try:
            answer = control_request(proxy.control_socket, command, timeout=timeout)
        except (OSError, ValueError) as error:
            raise DeploymentFailed(
                f"proxy (pid {proxy.process.pid}) does not answer {command['op']!r} on "
                f"{proxy.control_socket}: {error}; log {proxy.process.log_path}:\n"
                f"{log_tail(proxy.process.log_path)}"
            ) from None
        if not answer.get("ok"):
            raise DeploymentFailed(f"proxy refused {command}: {answer.get('error')}")
        return answer

    def _start_proxy(self, upstream_port: int | None = None) -> ProxyState:
        control_socket = self.state_dir / CONTROL_SOCKET
        if len(str(control_socket)) >= UNIX_SOCKET_PATH_MAX:
            raise DeploymentFailed(
                f"state_dir {self.state_dir} is too deep for the proxy's control socket "
                f"({len(str(control_socket))} >= {UNIX_SOCKET_PATH_MAX} characters); "
                "use a shorter path"
            )
        command = [
            sys.executable,
            "-m",
            "geo_busyness.deploy.proxy",
            "--listen-host",
            self.config.host,
            "--listen-port",
            str(self.config.port),
            "--control-socket",
            str(control_socket),
            "--grace-seconds",
            str(self.config.drain_timeout_seconds),
        ]
        if upstream_port is not None:
            command += ["--upstream", f"{LOOPBACK}:{upstream_port}"]
        process = _spawn(command, self.state_dir / LOG_DIR / "proxy.log", {})
        proxy = ProxyState(process, self.config.host, self.config.port, str(control_socket))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not process_alive(process):
                raise DeploymentFailed(
                    f"front proxy for {self.config.url} exited while starting (port taken by "
                    f"another process?); log {process.log_path}:\n{log_tail(process.log_path)}"
                )
            with contextlib.suppress(OSError, ValueError):
                if control_request(control_socket, {"op": "status"}, timeout=1).get("ok"):
                    return proxy
            time.sleep(0.05)
        stop_process(process, 5)
        raise DeploymentFailed(
            f"front proxy for {self.config.url} did not answer within 30s; log "
            f"{process.log_path}:\n{log_tail(process.log_path)}"
        )

    def _server_command(self, bundle: Path, port: int) -> list[str]:
        values = {
            "python": sys.executable,
            "model_dir": str(bundle),
            "host": LOOPBACK,
            "port": str(port),
        }
        try:
            return [part.format(**values) for part in self.config.server_command]
        except (KeyError, IndexError) as error:
            raise DeploymentFailed(
                f"server_command has an unknown placeholder {error}; use {{python}}, "
                "{model_dir}, {host}, {port}"
            ) from None

    def _start_server(self, manifest: BundleManifest) -> ServerState:
        """A server process for ``manifest`` on a free private port (not yet checked)."""
        port = _free_port(LOOPBACK)
        log_path = (
            self.state_dir
            / LOG_DIR
            / f"server-{compact_stamp()}-{slug(manifest.model_version, 40)}-{port}.log"
        )
        command = self._server_command(manifest.bundle_dir, port)
        return ServerState(
            process=_spawn(command, log_path, self.config.server_env),
            port=port,
            model_name=manifest.model_name,
            model_version=manifest.model_version,
            bundle_dir=str(manifest.bundle_dir),
            members={city: dict(model) for city, model in manifest.members.items()},
        )

    def _start_checked_server(self, manifest: BundleManifest, smoke: SmokeTest) -> ServerState:
        """Start the new server on a private port; kill it and raise unless /ping and smoke pass."""
        server = self._start_server(manifest)
        log_path = server.process.log_path
        try:
            self._wait_ready(server)
            problems = self._smoke(f"http://{LOOPBACK}:{server.port}", smoke)
            if problems:
                raise DeploymentFailed(
                    f"smoke test of model {manifest.model_version} failed: {'; '.join(problems)}"
                )
        except DeploymentFailed as error:
            stop_process(server.process, self.config.stop_timeout_seconds)
            raise DeploymentFailed(
                f"{error.reason}; the new server was stopped and the previous model (if any) "
                f"keeps serving. Server log {log_path}:\n{log_tail(log_path)}"
            ) from None
        except BaseException:
            stop_process(server.process, self.config.stop_timeout_seconds)
            raise
        return server

    def _restart_server(self, dead: ServerState) -> ServerState:
        """The deployed bundle of ``dead`` on a new server, ready on ``GET /ping``."""
        manifest = BundleManifest.read(dead.bundle_dir)
        server = self._start_server(manifest)
        try:
            self._wait_ready(server)
        except BaseException:
            stop_process(server.process, self.config.stop_timeout_seconds)
            raise
        return server

    def _wait_ready(self, server: ServerState) -> None:
        url = f"http://{LOOPBACK}:{server.port}/ping"
        deadline = time.monotonic() + self.config.startup_timeout_seconds
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not process_alive(server.process):
                child = _children.get(server.process.pid)
                code = child.returncode if child is not None else None
                raise DeploymentFailed(
                    f"server for model {server.model_version} exited while starting"
                    + (f" (exit code {code})" if code is not None else "")
                )
            try:
                status, body = http_request(url, timeout=2)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as error:
                last = str(error)
            time.sleep(0.1)
        raise DeploymentFailed(
            f"server for model {server.model_version} did not answer GET /ping with 200 within "
            f"{self.config.startup_timeout_seconds:.0f}s (last: {last})"
        )

    def _smoke(self, base_url: str, smoke: SmokeTest) -> list[str]:
        try:
            status, body = http_request(
                f"{base_url}/invocations",
                smoke.request_body(),
                timeout=self.config.request_timeout_seconds,
            )
        except OSError as error:
            return [f"POST /invocations failed: {error}"]
        if status != 200:
            return [f"POST /invocations answered HTTP {status}: {body[:300]!r}"]
        return smoke.problems(body)

    def _switch_to(self, state: EndpointState, new: ServerState, smoke: SmokeTest) -> None:
        """Point the proxy at ``new``; if the fixed address then answers wrongly, point it back."""
        assert state.proxy is not None
        self._control(state.proxy, {"op": "switch", "upstream": f"{LOOPBACK}:{new.port}"})
        problems = self._smoke(self.config.url, smoke)
        if not problems:
            return
        with contextlib.suppress(DeploymentFailed):
            if state.server is not None:
                self._control(
                    state.proxy, {"op": "switch", "upstream": f"{LOOPBACK}:{state.server.port}"}
                )
                # Let the proxy forget the failed server (and close its pooled connections).
                self._control(
                    state.proxy, {"op": "drain", "upstream": f"{LOOPBACK}:{new.port}", "timeout": 5}
                )
        stop_process(new.process, self.config.stop_timeout_seconds)
        raise DeploymentFailed(
            f"model {new.model_version} passed its smoke test directly but not through "
            f"{self.config.url}: {'; '.join(problems)}; switched back"
        )

    def _retire(self, proxy: ProxyState, old: ServerState) -> None:
        """Let the old server's running requests finish, then stop it."""
        with contextlib.suppress(DeploymentFailed):  # a stuck drain must not undo the deploy
            self._control(
                proxy,
                {
                    "op": "drain",
                    "upstream": f"{LOOPBACK}:{old.port}",
                    "timeout": self.config.drain_timeout_seconds,
                },
                timeout=self.config.drain_timeout_seconds + 10,
            )
        stop_process(old.process, self.config.stop_timeout_seconds)

    def _shutdown_proxy(self, proxy: ProxyState) -> None:
        stop_process(proxy.process, self.config.stop_timeout_seconds)
        Path(proxy.control_socket).unlink(missing_ok=True)

    def _prune_logs(self) -> None:
        logs = sorted((self.state_dir / LOG_DIR).glob("server-*.log"), key=os.path.getmtime)
        for old_log in logs[:-KEEP_SERVER_LOGS]:
            old_log.unlink(missing_ok=True)
