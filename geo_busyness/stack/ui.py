"""``geo-busyness ui``: what a data engineer opens, over the local defaults, in one command.

Starts, each in its own process group with its log under ``<data dir>/ui-logs``:

* the report server: the local report store (drift reports, the pictures of asset metadata)
  read-only over HTTP at ``GEO_BUSYNESS_REPORTS_URL`` (default ``http://127.0.0.1:3001``), the
  address the assets wrote into their metadata, so links open and pictures show inline;
* the MLflow UI over the local tracking store at the address run links point at (``ui_url``,
  default ``http://127.0.0.1:5000``), unless tracking goes to a server, which has its own UI;
* ``dagster dev`` (webserver and daemon) on ``127.0.0.1:<port>``.

Stops all of them on Ctrl-C / SIGTERM, or when one of them dies (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from geo_busyness.stack.local_stack import (
    MLFLOW_SERVER_SETTINGS,
    StackError,
    console_tool,
    port_free,
    process_alive,
    start_service,
    stop_group,
    wait_http,
)
from geo_busyness.stack.services import LOOPBACK

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    url: str  # what the user opens
    ready: str  # answers 200 once the service is up


def report_app(directory: str) -> Starlette:
    """The report store's files, read-only (Starlette refuses paths that leave ``directory``);
    an HTML report opens as a page, a picture as an image."""
    return Starlette(
        routes=[
            Route("/healthz", lambda request: PlainTextResponse("ok")),
            Mount("/", StaticFiles(directory=directory, check_dir=False)),
        ]
    )


def serve_reports(argv: list[str] | None = None) -> int:
    """``python -m geo_busyness.stack.ui <directory> <port>``: the report server process."""
    import uvicorn

    parser = argparse.ArgumentParser(description="serve a local report store on loopback")
    parser.add_argument("directory")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    Path(args.directory).mkdir(parents=True, exist_ok=True)
    uvicorn.run(report_app(args.directory), host=LOOPBACK, port=args.port, log_level="warning")
    return 0


def _loopback_port(url: str, what: str) -> int:
    parts = urlsplit(url)
    if parts.hostname not in (LOOPBACK, "localhost") or parts.port is None:
        raise StackError(f"{what} {url} is not a loopback address with a port: nothing to start")
    if not port_free(parts.port):
        raise StackError(f"{what} port {parts.port} on {LOOPBACK} is in use: stop what uses it")
    return parts.port


def services(dagster_port: int) -> list[Service]:
    """Every service to start, from the configured resources, in start order."""
    from geo_busyness.resources.environment import build_resources
    from geo_busyness.resources.tracking import LOCAL_UI_URL

    resources = build_resources()
    found = []
    # values of set variables are dg.EnvVar until resolved
    reports = resources["report_store"].process_config_and_initialize()
    if reports.public_url and not reports.is_s3:
        port = _loopback_port(reports.public_url, "GEO_BUSYNESS_REPORTS_URL")
        found.append(
            Service(
                "reports",
                [sys.executable, "-m", "geo_busyness.stack.ui", reports.base_path, str(port)],
                reports.public_url,
                f"http://{LOOPBACK}:{port}/healthz",
            )
        )
    tracking = resources["mlflow_tracking"].process_config_and_initialize()
    if tracking.uri.startswith("sqlite:"):
        url = tracking.ui_url or LOCAL_UI_URL
        port = _loopback_port(url, "the MLflow UI")
        command = [console_tool("mlflow"), "ui", "--backend-store-uri", tracking.uri]
        command += ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
        found.append(Service("mlflow", command, url, f"http://{LOOPBACK}:{port}/health"))
    if not port_free(dagster_port):
        raise StackError(f"port {dagster_port} on {LOOPBACK} is in use: pass --port")
    command = [console_tool("dagster"), "dev", "-w", str(REPO / "workspace.yaml")]
    command += ["-h", LOOPBACK, "-p", str(dagster_port)]
    url = f"http://{LOOPBACK}:{dagster_port}"
    found.append(Service("dagster", command, url, f"{url}/server_info"))
    return found


def run_ui(dagster_port: int = 3000, say: Callable[[str], None] = print) -> int:
    """Start every service, wait until interrupted or until one dies, stop them all."""
    import dagster as dg

    from geo_busyness.resources.settings import default_data_dir
    from geo_busyness.runner import dagster_home, fail_orphaned_runs

    say(f"DAGSTER_HOME={dagster_home()}")
    # Runs killed earlier (a stopped demo) would otherwise hold the daemon's run slots.
    with dg.DagsterInstance.get() as instance:
        fail_orphaned_runs(instance, log=say)
    logs = default_data_dir() / "ui-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started: dict[str, int] = {}
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _: stop.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))
    try:
        for service in services(dagster_port):
            log = logs / f"{service.name}.log"
            process = start_service(
                service.command, {**os.environ, **MLFLOW_SERVER_SETTINGS}, log, REPO
            )
            started[service.name] = process.pid
            wait_http(service.ready, process, service.name, log)
            say(f"{service.name:8} {service.url}")
        say(f"logs in {logs}; Ctrl-C stops everything")
        dead: list[str] = []
        while not stop and not dead:
            time.sleep(1)
            dead = [name for name, pid in started.items() if not process_alive(pid)]
        if dead:
            say(f"ui: {', '.join(dead)} stopped unexpectedly; see {logs}")
        return 1 if dead else 0
    finally:
        # Dagster first (it stops cleanly on SIGINT), then what its pages link to.
        for name in ("dagster", "mlflow", "reports"):
            if name in started:
                stop_group(started[name], signal.SIGINT if name == "dagster" else signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(serve_reports())
