"""The inference server as a real process: ``python -m geo_busyness.serving`` on a free loopback
port, spoken to over HTTP, stopped with SIGTERM like SageMaker stops a container."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

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
    return snapshot, model.predict(snapshot[names])


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
