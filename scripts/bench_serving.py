"""Benchmark of the inference server against ``mlflow models serve`` of the same model.

Both servers run as real processes on loopback with one worker each. The load generator is a
minimal asyncio HTTP/1.1 keep-alive client (uvloop), so it costs far less CPU per request
than the servers it measures. It shares the machine's 2 cores with them.

* open loop: single-instance requests sent on a fixed schedule (``--rate`` per second for
  ``--seconds``). Latency runs from each request's *scheduled* send time to the end of its
  response, so a stalled server is charged for the requests queued behind it.
* batch: one request of ``--batch`` instances, median of ``--repeats``.
* closed loop: ``c`` clients, each sending its next request when the last one is answered,
  for c in ``--concurrency``; the best rate is the server's max sustainable throughput.

Our server gets (cell, timestamp) instances and does the lookup; MLflow gets the feature rows
themselves (``dataframe_split``), so it does less work per request. Figures are printed as a
Markdown table and saved to ``bench-data/serving.json``.

    uv run --frozen --no-sync python scripts/bench_serving.py            # ~3 min
    uv run --frozen --no-sync python scripts/bench_serving.py --quick    # smoke run, ~40 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import uvloop
import xgboost as xgb

from geo_busyness.serving.bundle import FEATURES_FILE, MODEL_FILE, load_bundle
from geo_busyness.serving.demo import write_demo_bundle
from geo_busyness.serving.requests import MAX_EXPLAINED_INSTANCES
from geo_busyness.stack.services import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
WARM_UP_REQUESTS = 300
TARGETS = {"p50_ms": 5.0, "p99_ms": 20.0, "batch_ms": 300.0, "throughput_ratio": 3.0}


# ---------------------------------------------------------------------------------------------
# A lean HTTP/1.1 client


class Connection:
    """One keep-alive connection; ``send`` writes a prebuilt request and reads the response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection(HOST, port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, await self.reader.readexactly(int(headers["content-length"]))
        chunks = []
        while True:  # chunked transfer encoding
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(chunks)
            chunks.append(chunk[:-2])

    def close(self) -> None:
        self.writer.close()


def http_post(
    port: int, body: bytes, content_type: str = "application/json", inference_id: str = ""
) -> bytes:
    """A whole request, built once; ``inference_id`` tags its lines in the server's log."""
    tag = f"X-Amzn-SageMaker-Inference-Id: {inference_id}\r\n" if inference_id else ""
    return (
        f"POST /invocations HTTP/1.1\r\nHost: {HOST}:{port}\r\n{tag}"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def open_loop(
    port: int, requests: list[bytes], rate: float, seconds: float
) -> dict[str, float]:
    """Send on a fixed schedule; latency from the scheduled time; connections pooled.

    Times come from ``time.perf_counter``: uvloop's ``loop.time()`` ticks in milliseconds.
    """
    count = int(rate * seconds)
    latency = np.full(count, np.nan)
    idle: list[Connection] = []
    opened = failures = 0
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        nonlocal failures, opened
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        status = 0
        while idle and not status:  # the most recently used connection first
            connection = idle.pop()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                status, _ = await connection.send(requests[i % len(requests)])
            if not status:  # the server closed it while idle: a client retries
                connection.close()
        if not status:
            connection = await Connection.open(port)
            opened += 1
            status, _ = await connection.send(requests[i % len(requests)])
        latency[i] = time.perf_counter() - scheduled
        failures += status != 200
        idle.append(connection)

    await asyncio.gather(*(one(i) for i in range(count)))
    finished = time.perf_counter()
    for connection in idle:
        connection.close()
    ms = latency * 1e3
    return {
        "requests": count,
        "failures": int(failures),
        "achieved_rate": count / (finished - start),
        "connections": opened,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


async def closed_loop(
    port: int, requests: list[bytes], clients: int, seconds: float
) -> dict[str, float]:
    """``clients`` connections, each sending as soon as its last response arrived."""
    connections = [await Connection.open(port) for _ in range(clients)]
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    failures = 0

    async def client(k: int, connection: Connection) -> None:
        nonlocal failures
        i = k
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            status, _ = await connection.send(requests[i % len(requests)])
            latencies.append(time.perf_counter() - sent)
            failures += status != 200
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(k, c) for k, c in enumerate(connections)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    ms = np.asarray(latencies) * 1e3
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": int(failures),
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


async def batch_latency(port: int, request: bytes, repeats: int) -> dict[str, float]:
    connection = await Connection.open(port)
    times = []
    for _ in range(repeats + 1):  # the first one warms caches up
        sent = time.perf_counter()
        status, body = await connection.send(request)
        times.append(time.perf_counter() - sent)
        if status != 200:
            raise RuntimeError(f"batch request failed with {status}: {body[:300]!r}")
    connection.close()
    ms = np.asarray(times[1:]) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


async def warm_up(port: int, requests: list[bytes], count: int = WARM_UP_REQUESTS) -> None:
    connection = await Connection.open(port)
    for i in range(count):
        status, body = await connection.send(requests[i % len(requests)])
        if status != 200:
            raise RuntimeError(f"warm-up request failed with {status}: {body[:300]!r}")
    connection.close()


# ---------------------------------------------------------------------------------------------
# Servers


def wait_until_up(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(
        f"server on port {port} not up after {timeout:.0f}s:\n{log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def server(command: list[str], port: int, log: Path, env: dict | None = None) -> Iterator[int]:
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        try:
            wait_until_up(port, process, log, timeout=180)
            yield port
        finally:
            stop_process_group(process, timeout=20)


def log_mlflow_model(model: xgb.XGBRegressor, sample: pd.DataFrame, root: Path) -> str:
    """Log the model as training would, into a throw-away SQLite store; its model URI."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment(
        "serving-bench", artifact_location=(root / "artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.xgboost.log_model(
            model,
            name="model",
            signature=infer_signature(sample, model.predict(sample)),
            pip_requirements=[f"xgboost=={xgb.__version__}", f"pandas=={pd.__version__}"],
        )
    return info.model_uri


# ---------------------------------------------------------------------------------------------
# The benchmark


def load_average() -> str:
    """1, 5 and 15 minute load averages: the machine is shared, so say how busy it was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_server(
    name: str,
    port: int,
    singles: list[bytes],
    batch: bytes,
    args: argparse.Namespace,
) -> dict:
    result: dict = {"load_before": load_average()}
    asyncio.run(warm_up(port, singles))
    result["open_loop"] = asyncio.run(open_loop(port, singles, args.rate, args.seconds))
    print(f"  {name} open loop: {result['open_loop']}", flush=True)
    result["batch"] = asyncio.run(batch_latency(port, batch, args.repeats))
    print(f"  {name} batch: {result['batch']}", flush=True)
    result["closed_loop"] = []
    for clients in args.concurrency:
        run = asyncio.run(closed_loop(port, singles, clients, args.closed_seconds))
        result["closed_loop"].append(run)
        print(f"  {name} closed loop: {run}", flush=True)
    result["max_throughput_rps"] = max(r["throughput_rps"] for r in result["closed_loop"])
    result["load_after"] = load_average()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: a demo bundle)")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="open-loop duration")
    parser.add_argument("--batch", type=int, default=10_000, help="instances in the batch")
    parser.add_argument("--repeats", type=int, default=9, help="batch requests (median)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--closed-seconds", type=float, default=8.0)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--out", type=Path, default=REPO / "bench-data" / "serving.json")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.closed_seconds = 3.0, 3, 2.0
        args.concurrency = [1, 4]
    uvloop.install()

    work = Path(tempfile.mkdtemp(prefix="bench-serving-", dir=REPO / "bench-data"))
    try:
        bundle_dir = args.bundle or write_demo_bundle(
            work / "bundle", rings=8, hours=24, n_estimators=300
        )
        bundle = load_bundle(bundle_dir)
        names = bundle.manifest.feature_names
        model = xgb.XGBRegressor()
        model.load_model(bundle_dir / MODEL_FILE)
        snapshot = pd.read_parquet(bundle_dir / FEATURES_FILE)
        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(snapshot), 1_000)
        batch_picks = rng.integers(0, len(snapshot), args.batch)
        minutes = pd.to_timedelta(rng.integers(0, 60, len(snapshot)), unit="min")
        stamps = (snapshot["hour_start"] + minutes).map(pd.Timestamp.isoformat).to_numpy()
        cells = snapshot["h3_cell"].to_numpy(object)

        def instances(rows: np.ndarray, explain: bool = False) -> bytes:
            document: dict = {
                "instances": [{"h3_cell": cells[r], "timestamp": stamps[r]} for r in rows.tolist()]
            }
            if explain:  # each prediction's SHAP contributions too
                document["explain"] = True
            return json.dumps(document).encode()

        def feature_rows(rows: np.ndarray) -> bytes:
            values = snapshot[names].iloc[rows].astype("float64")
            data = values.astype(object).where(values.notna(), None).to_numpy().tolist()
            return json.dumps({"dataframe_split": {"columns": names, "data": data}}).encode()

        results: dict = {
            "when": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "xgboost": xgb.__version__,
            },
            "bundle": {
                "rows": len(bundle.index),
                "hexagons": len(bundle.index.cells),
                "trees_used": bundle.iteration_range[1] or bundle.booster.num_boosted_rounds(),
                "features": len(names),
            },
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }
        print(f"bundle: {results['bundle']}", flush=True)
        # The load generator must not pause to rescan the payloads and the loaded modules.
        gc.collect()
        gc.freeze()

        port = free_port()
        command = [sys.executable, "-m", "geo_busyness.serving", "--model-dir", str(bundle_dir)]
        command += ["--host", HOST, "--port", str(port), "--workers", "1"]  # logs every request
        with server(command, port, work / "serve.log"):
            singles = [
                http_post(port, instances(picks[i : i + 1]), inference_id="single")
                for i in range(len(picks))
            ]
            ours = bench_server(
                "serve",
                port,
                singles,
                http_post(port, instances(batch_picks), inference_id="batch-json"),
                args,
            )
            csv_body = "h3_cell,timestamp\n" + "".join(
                f"{cells[r]},{stamps[r]}\n" for r in batch_picks.tolist()
            )
            ours["batch_csv"] = asyncio.run(
                batch_latency(
                    port,
                    http_post(port, csv_body.encode(), "text/csv", inference_id="batch-csv"),
                    args.repeats,
                )
            )
            explained = instances(batch_picks[:MAX_EXPLAINED_INSTANCES], explain=True)
            ours["batch_explain"] = asyncio.run(
                batch_latency(
                    port,
                    http_post(port, explained, inference_id="batch-explain"),
                    args.repeats,
                )
            )
        log_lines = [
            json.loads(line)
            for line in (work / "serve.log").read_text().splitlines()
            if line.startswith('{"event": "invocation"')
        ]
        # The server's own view of the open loop: its handler time, queueing excluded.
        open_count = int(args.rate * args.seconds)
        logged = [x["latency_ms"] for x in log_lines if x["inference_id"] == "single"]
        handler_ms = np.asarray(logged[WARM_UP_REQUESTS : WARM_UP_REQUESTS + open_count])
        ours["open_loop_server_side"] = {
            "p50_ms": float(np.percentile(handler_ms, 50)),
            "p99_ms": float(np.percentile(handler_ms, 99)),
            "max_ms": float(handler_ms.max()),
        }
        for kind in ("json", "csv", "explain"):  # without the warm-up request
            logged = [x["latency_ms"] for x in log_lines if x["inference_id"] == f"batch-{kind}"]
            ours[f"batch_{kind}_server_side_median_ms"] = float(np.median(logged[1:]))
        results["serve"] = ours

        if not args.skip_mlflow:
            uri = log_mlflow_model(model, snapshot[names].astype("float64").iloc[:200], work)
            port = free_port()
            command = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
            command += ["-h", HOST, "-p", str(port)]
            env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
            with server(command, port, work / "mlflow.log", env):
                singles = [
                    http_post(port, feature_rows(picks[i : i + 1])) for i in range(len(picks))
                ]
                # the same prediction from both servers
                _, answer = asyncio.run(_one(port, singles[0]))
                expected = model.predict(snapshot[names].iloc[picks[:1]])
                results["mlflow_agrees"] = bool(
                    np.float32(json.loads(answer)["predictions"][0]) == expected[0]
                )
                results["mlflow"] = bench_server(
                    "mlflow", port, singles, http_post(port, feature_rows(batch_picks)), args
                )
            results["throughput_ratio"] = (
                results["serve"]["max_throughput_rps"] / results["mlflow"]["max_throughput_rps"]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nsaved to {args.out}")


async def _one(port: int, request: bytes) -> tuple[int, bytes]:
    connection = await Connection.open(port)
    try:
        return await connection.send(request)
    finally:
        connection.close()


def table(results: dict) -> str:
    ours, theirs = results["serve"], results.get("mlflow")
    rows = [
        ("single instance at {:.0f} req/s, p50".format(results["settings"]["rate"]), "p50_ms"),
        ("single instance at {:.0f} req/s, p99".format(results["settings"]["rate"]), "p99_ms"),
    ]
    lines = ["| measure | serve | mlflow models serve | target |", "| --- | --- | --- | --- |"]
    for label, key in rows:
        other = f"{theirs['open_loop'][key]:.2f} ms" if theirs else "-"
        lines.append(
            f"| {label} | {ours['open_loop'][key]:.2f} ms | {other} | <= {TARGETS[key]:.0f} ms |"
        )
    server_side = ours["open_loop_server_side"]
    lines.append(
        f"| same, in the server (logged `latency_ms`), p50 / p99 / max | "
        f"{server_side['p50_ms']:.2f} / {server_side['p99_ms']:.2f} / "
        f"{server_side['max_ms']:.1f} ms | - | |"
    )
    other = f"{theirs['batch']['median_ms']:.1f} ms" if theirs else "-"
    lines.append(
        f"| {results['settings']['batch']:,}-instance batch, median | "
        f"{ours['batch']['median_ms']:.1f} ms | {other} | < {TARGETS['batch_ms']:.0f} ms |"
    )
    lines.append(
        f"| same batch, in the server (logged `latency_ms`), median | "
        f"{ours['batch_json_server_side_median_ms']:.1f} ms | - | |"
    )
    lines.append(
        f"| same batch as CSV, median (in the server) | {ours['batch_csv']['median_ms']:.1f} ms "
        f"({ours['batch_csv_server_side_median_ms']:.1f} ms) | - | |"
    )
    other = f"{theirs['max_throughput_rps']:,.0f} req/s" if theirs else "-"
    ratio = f"{results['throughput_ratio']:.1f}x" if theirs else "-"
    lines.append(
        f"| max throughput (closed loop) | {ours['max_throughput_rps']:,.0f} req/s | {other} | "
        f">= 3x mlflow (got {ratio}) |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
