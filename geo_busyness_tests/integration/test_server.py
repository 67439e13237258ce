"""The inference server as a real process: ``python -m geo_busyness.serving`` on a free loopback
port, spoken to over HTTP, stopped with SIGTERM like SageMaker stops a container."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from geo_busyness.core.model import predict_orders
from geo_busyness.serving.bundle import FEATURES_FILE, MODEL_FILE, load_bundle
from geo_busyness.serving.demo import write_demo_bundle
from geo_busyness.stack.services import LOOPBACK, free_port, stop_process_group

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 90.0
MAX_BODY_BYTES = 100_000


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return write_demo_bundle(
        tmp_path_factory.mktemp("serving") / "bundle", rings=2, hours=6, n_estimators=60
    )


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def wait_for_ping(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if request(port, "GET", "/ping")[0] == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"server not answering /ping after {STARTUP_TIMEOUT_S:.0f}s:\n{log.read_text()}")


@contextlib.contextmanager
def running_server(
    log: Path, args: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "geo_busyness.serving", *args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                stop_process_group(process, timeout=20)


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory) -> Iterator[tuple[int, subprocess.Popen, Path]]:
    port = free_port()
    log = tmp_path_factory.mktemp("serving-log") / "serve.log"
    args = ["--model-dir", str(bundle_dir), "--host", LOOPBACK, "--port", str(port)]
    with running_server(log, [*args, "--max-body-bytes", str(MAX_BODY_BYTES)]) as process:
        wait_for_ping(port, process, log)
        yield port, process, log


@pytest.fixture(scope="module")
def offline(bundle_dir) -> tuple[pd.DataFrame, np.ndarray]:
    """The snapshot rows and what ``XGBRegressor.predict`` says for them, in process."""
    snapshot = pd.read_parquet(bundle_dir / FEATURES_FILE)
    model = xgb.XGBRegressor()
    model.load_model(bundle_dir / MODEL_FILE)
    names = load_bundle(bundle_dir).manifest.feature_names
    return snapshot, predict_orders(model, snapshot, names)


def post_json(port: int, document: dict, headers: dict | None = None):
    return request(
        port,
        "POST",
        "/invocations",
        json.dumps(document).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def test_ping(server):
    port, _, _ = server
    status, _, body = request(port, "GET", "/ping")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_json_predictions_match_in_process_predictions(server, offline):
    port, _, _ = server
    snapshot, expected = offline
    order = np.random.default_rng(1).permutation(len(snapshot))
    instances = [
        {
            "h3_cell": snapshot["h3_cell"].iloc[i],
            "timestamp": (snapshot["hour_start"].iloc[i] + pd.Timedelta(minutes=59)).isoformat(),
        }
        for i in order.tolist()
    ]
    status, _, body = post_json(
        port, {"instances": instances}, {"X-Amzn-SageMaker-Inference-Id": "it-1"}
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["inference_id"] == "it-1"
    assert answer["model_name"] == "busyness-demo"
    got = pd.DataFrame(answer["predictions"])
    assert got["h3_cell"].tolist() == snapshot["h3_cell"].iloc[order].tolist()
    np.testing.assert_array_equal(got["busyness"].to_numpy().astype("float32"), expected[order])


def test_csv_predictions_match_in_process_predictions(server, offline):
    port, _, _ = server
    snapshot, expected = offline
    rows = np.arange(0, len(snapshot), 3)
    body = "h3_cell,timestamp\n" + "".join(
        f"{snapshot['h3_cell'].iloc[i]},{snapshot['hour_start'].iloc[i].isoformat()}\n"
        for i in rows.tolist()
    )
    status, headers, content = request(
        port,
        "POST",
        "/invocations",
        body.encode(),
        {"Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert status == 200, content
    assert headers["content-type"].startswith("text/csv")
    lines = content.decode().splitlines()
    assert lines[0] == "h3_cell,hour_start,busyness"
    busyness = np.array([line.rsplit(",", 1)[1] for line in lines[1:]], dtype="float32")
    np.testing.assert_array_equal(busyness, expected[rows])


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, offline):
    port, process, _ = server
    snapshot, expected = offline
    good = {
        "instances": [{"h3_cell": snapshot["h3_cell"].iloc[0], "timestamp": "2025-03-03T00:30:00Z"}]
    }
    bad_requests = [
        (b'{"instances": [', {"Content-Type": "application/json"}, 400, "malformed JSON"),
        (b"a,b\n1,2\n", {"Content-Type": "text/csv"}, 400, "lacks timestamp"),
        (b"<x/>", {"Content-Type": "application/xml"}, 415, "application/xml"),
        (b"x" * (MAX_BODY_BYTES + 1), {"Content-Type": "text/csv"}, 413, str(MAX_BODY_BYTES)),
        (
            json.dumps(
                {"instances": [{"lat": 91, "lon": 0, "timestamp": "2025-03-03T00:00:00Z"}]}
            ).encode(),
            {"Content-Type": "application/json"},
            400,
            "instances[0].lat",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"h3_cell": snapshot["h3_cell"].iloc[0], "timestamp": "2030-01-01T00:00Z"}
                    ]
                }
            ).encode(),
            {"Content-Type": "application/json"},
            422,
            "outside the snapshot's horizon",
        ),
    ]
    for body, headers, status, message in bad_requests:
        got, response_headers, content = request(port, "POST", "/invocations", body, headers)
        assert got == status, content
        assert response_headers["content-type"].startswith("application/json")
        assert message in json.loads(content)["error"]["message"]
        ok, _, answer = post_json(port, good)  # and the next request is served
        assert ok == 200
        assert np.float32(json.loads(answer)["predictions"][0]["busyness"]) == expected[0]
    assert process.poll() is None


def test_one_json_log_line_per_invocation(server):
    port, _, log = server
    post_json(port, {"instances": []}, {"X-Amzn-SageMaker-Inference-Id": "log-probe"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        probe = [line for line in lines if line.get("inference_id") == "log-probe"]
        if probe:
            break
        time.sleep(0.1)
    assert len(probe) == 1
    assert probe[0]["status"] == 400 and probe[0]["rows"] == 0
    assert probe[0]["model_version"] == "0"
    assert any(line.get("event") == "bundle_loaded" for line in lines)


def test_sagemaker_defaults_workers_and_a_clean_stop(bundle_dir, tmp_path, offline):
    """Model dir and port from SageMaker's variables, two workers, exit 0 on SIGTERM."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {"SM_MODEL_DIR": str(bundle_dir), "SAGEMAKER_BIND_TO_PORT": str(port)}
    with running_server(log, ["--host", LOOPBACK, "--workers", "2"], env) as process:
        wait_for_ping(port, process, log)
        snapshot, expected = offline
        status, _, body = post_json(
            port,
            {
                "instances": [
                    {
                        "h3_cell": snapshot["h3_cell"].iloc[5],
                        "timestamp": snapshot["hour_start"].iloc[5].isoformat(),
                    }
                ]
            },
        )
        assert status == 200
        assert np.float32(json.loads(body)["predictions"][0]["busyness"]) == expected[5]
        stop_process_group(process, timeout=20)
        assert process.returncode == 0, log.read_text()
    loaded = [json.loads(x) for x in log.read_text().splitlines() if '"bundle_loaded"' in x]
    # the supervisor checks the bundle before starting workers, then each loads its own copy
    assert len({line["pid"] for line in loaded}) == 3


def test_a_missing_bundle_fails_fast(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "geo_busyness.serving", "--model-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "cannot load the bundle" in result.stderr and "lacks" in result.stderr


# ---------------------------------------------------------------------------------------------
# Hostile clients: every cost bounded, every refusal a 4xx, nothing held for long

HEADER_TIMEOUT_S = 1
BODY_TIMEOUT_S = 2
MAX_CONNECTIONS = 64


@pytest.fixture(scope="module")
def guarded(bundle_dir, tmp_path_factory) -> Iterator[tuple[int, subprocess.Popen, Path]]:
    """A server with the default body limit and short timeouts, so the tests wait seconds."""
    port = free_port()
    log = tmp_path_factory.mktemp("serving-guarded") / "serve.log"
    args = [
        *("--model-dir", str(bundle_dir), "--host", LOOPBACK, "--port", str(port)),
        *("--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S)),
        *("--max-connections", str(MAX_CONNECTIONS), "--keep-alive", "2"),
    ]
    with running_server(log, args) as process:
        wait_for_ping(port, process, log)
        yield port, process, log


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def ping_seconds(port: int) -> float:
    started = time.perf_counter()
    status, _, _ = request(port, "GET", "/ping")
    assert status == 200
    return time.perf_counter() - started


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def status_of(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else None


def test_unknown_keys_cost_linear_time_and_ping_stays_fast(guarded, offline):
    """12,000 instances with one distinct extra key each: 8.7 s and /ping blocked 8.4 s before."""
    port, process, _ = guarded
    snapshot, _ = offline
    cell, hour = snapshot["h3_cell"].iloc[0], snapshot["hour_start"].iloc[0].isoformat()
    document = {
        "instances": [{"h3_cell": cell, "timestamp": hour, f"k{i}": i} for i in range(12_000)]
    }
    body = json.dumps(document).encode()
    results: dict = {}

    def heavy() -> None:
        started = time.perf_counter()
        results["status"] = post_json(port, document)[0]
        results["seconds"] = time.perf_counter() - started

    before = rss_mb(process.pid)
    thread = threading.Thread(target=heavy)
    thread.start()
    pings = []
    while thread.is_alive():
        pings.append(ping_seconds(port))
    thread.join()
    assert results["status"] == 200
    assert results["seconds"] < 3.0, f"{results['seconds']:.2f}s for {len(body)} bytes"
    assert max(pings) < 0.5, f"/ping took {max(pings):.3f}s while the heavy request ran"
    assert rss_mb(process.pid) - before < 200


def test_malformed_input_gets_a_4xx_naming_the_field(guarded, offline):
    port, _, log = guarded
    snapshot, expected = offline
    cell = snapshot["h3_cell"].iloc[0]
    hour = snapshot["hour_start"].iloc[0].isoformat()
    huge = "9" * 5_000
    cases = [
        ('{"instances": [{"lat": ' + huge + f', "lon": 0, "timestamp": "{hour}"}}]}}', "lat"),
        (json.dumps({"instances": [{"lat": 2**53 + 1, "lon": 0, "timestamp": hour}]}), "lat"),
        (
            json.dumps({"instances": [{"h3_cell": cell, "timestamp": "9999-01-01T00:00Z"}]}),
            "timestamp",
        ),
        (
            json.dumps({"instances": [{"h3_cell": cell, "timestamp": hour, "x": 0}]}).replace(
                '"x": 0', '"x": ' + "[" * 900 + "]" * 900
            ),
            "body",
        ),
    ]
    for body, field in cases:
        status, _, content = request(
            port, "POST", "/invocations", body.encode(), {"Content-Type": "application/json"}
        )
        error = json.loads(content)["error"]
        assert 400 <= status < 500 and error["field"] == field, (status, error)
    # CR-only line endings and upper-case headers, as ingestion reads them
    csv_body = f"H3_CELL, Timestamp\r{cell},{hour}\r".encode()
    status, _, content = request(
        port, "POST", "/invocations", csv_body, {"Content-Type": "text/csv", "Accept": "text/csv"}
    )
    assert status == 200, content
    assert np.float32(content.decode().splitlines()[1].rsplit(",", 1)[1]) == expected[0]
    assert "Traceback" not in log.read_text()


def test_huge_and_numerous_headers_are_refused_early(guarded):
    """A 64 MB header used to be read whole; 5,000 headers are refused too."""
    port, process, _ = guarded
    before = rss_mb(process.pid)
    sent = 0
    status = None
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Big: "
        try:
            sock.sendall(head)
            chunk = b"a" * 65536
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            status = status_of(sock.recv(65536))
    assert sent < 16 * 1024 * 1024, f"the server kept reading a {sent}-byte header"
    assert status in (431, None)
    assert rss_mb(process.pid) - before < 50

    many = b"".join(b"X-H%d: v\r\n" % i for i in range(5_000))
    raw = raw_exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert status_of(raw) == 431, raw[:200]
    assert ping_seconds(port) < 1


def test_idle_half_sent_and_slow_connections_are_closed(guarded):
    port, _, _ = guarded
    idle = socket.create_connection((LOOPBACK, port), timeout=10)
    half = socket.create_connection((LOOPBACK, port), timeout=10)
    half.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-")
    slow = socket.create_connection((LOOPBACK, port), timeout=10)
    slow.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"instances": ['
    )
    started = time.monotonic()
    try:
        assert idle.recv(100) == b""  # closed without a word: it never asked anything
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 2
        answer = half.recv(65536)
        assert status_of(answer) == 408, answer
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 2
        answer = slow.recv(65536)
        assert status_of(answer) == 408, answer
        assert b"body" in answer
        assert time.monotonic() - started < BODY_TIMEOUT_S + 2
        with contextlib.suppress(OSError):
            assert slow.recv(100) == b""
    finally:
        for sock in (idle, half, slow):
            sock.close()


def test_connections_are_bounded_and_requests_still_served(guarded, offline):
    """3,000 half-sent requests held 3,018 descriptors; now at most MAX_CONNECTIONS are kept,
    the stalest idle ones are dropped for new ones, and real requests are still served."""
    port, process, _ = guarded
    snapshot, _ = offline
    baseline = open_fds(process.pid)
    socks = []
    try:
        for _ in range(600):
            sock = socket.create_connection((LOOPBACK, port), timeout=10)
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(sock)
        time.sleep(0.3)
        assert open_fds(process.pid) <= baseline + MAX_CONNECTIONS + 2
        good = {
            "instances": [
                {
                    "h3_cell": snapshot["h3_cell"].iloc[0],
                    "timestamp": snapshot["hour_start"].iloc[0].isoformat(),
                }
            ]
        }
        assert post_json(port, good)[0] == 200
        assert ping_seconds(port) < 1
    finally:
        for sock in socks:
            sock.close()


def test_a_client_disconnect_is_logged_as_a_disconnect(guarded):
    port, _, log = guarded
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'X-Amzn-SageMaker-Inference-Id: gone-away\r\nContent-Length: 5000\r\n\r\n{"inst'
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and "gone-away" in line
        ]
        if lines:
            break
        time.sleep(0.1)
    assert [(line["event"], line["status"]) for line in lines] == [("client_disconnected", 499)]
    assert "Traceback" not in log.read_text()
