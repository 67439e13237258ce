"""Keeps a local endpoint's proxy and model server running (see :mod:`geo_busyness.deploy.local`).

``python -m geo_busyness.deploy.supervisor STATE_DIR``, started by the first deployment in
``STATE_DIR``. Every ``supervisor_interval_seconds`` it runs one :meth:`LocalEndpoint.heal`
pass; after a failed restart it waits twice as long before the next try (at most
``MAX_BACKOFF_S``), so a bundle that crashes at start does not spin. It exits when the endpoint
is stopped or another supervisor took its place, and on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from geo_busyness.deploy.local import SUPERVISOR_CONFIG, LocalEndpoint, LocalEndpointConfig

MAX_BACKOFF_S = 30.0


def supervise(state_dir: Path, stop: threading.Event) -> None:
    failures = 0
    while not stop.is_set():
        config = LocalEndpointConfig.from_json(
            state_dir, json.loads((state_dir / SUPERVISOR_CONFIG).read_text())
        )
        events = LocalEndpoint(config).heal()
        if events is None:
            return
        for event in events:
            print(json.dumps(event), flush=True)
        failures = failures + 1 if any(not event["ok"] for event in events) else 0
        stop.wait(min(config.supervisor_interval_seconds * 2**failures, MAX_BACKOFF_S))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m geo_busyness.deploy.supervisor STATE_DIR", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    supervise(Path(args[0]), stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
