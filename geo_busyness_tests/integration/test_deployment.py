"""Deployment targets against real processes and a real (moto) AWS API on loopback.

Local target: real server processes behind the real front proxy on a free loopback port. The
model server is a stand-in written below (stdlib ``http.server``, same flags and routes as
``geo_busyness.serving``) until that package lands; it reads ``manifest.json`` and behaves
as the manifest's ``stand_in`` key says (``ok``, ``ping_fails``, ``exit``, ``wrong_version``)
so a "broken bundle" is just data. To run against the real server, set ``SERVER_COMMAND`` to
``DEFAULT_SERVER_COMMAND`` and build real bundles.

SageMaker target: ``moto.server.ThreadedMotoServer`` on 127.0.0.1 (S3, SageMaker and
SageMaker runtime in one server). Moto does not run the image: ``invoke_endpoint`` returns a
canned body, which the tests queue through moto's ``/moto-api/static/sagemaker/endpoint-results``
to be what the real server would answer. So these tests prove the API calls, names,
data capture and S3 upload, not the container. moto 5.2 lacks ``update_endpoint``; the update
and rollback paths are covered with botocore's Stubber in ``unit/test_deploy_sagemaker.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import tarfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from geo_busyness.core.model import predict_orders
from geo_busyness.deploy import (
    DeploymentFailed,
    LocalEndpoint,
    LocalEndpointConfig,
    SageMakerConfig,
    SageMakerEndpoint,
    SmokeTest,
)
from geo_busyness.deploy.local import process_alive
from geo_busyness.resources.deployment import EndpointTarget, LocalEndpointTarget
from geo_busyness.stack.services import free_port

pytestmark = pytest.mark.integration

STAND_IN_SERVER = r'''
"""Stand-in for `python -m geo_busyness.serving`: same flags, /ping, /invocations."""
import argparse, json, os, signal, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir", required=True)
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
args = parser.parse_args()
manifest = json.load(open(os.path.join(args.model_dir, "manifest.json")))
behaviour = manifest.get("stand_in", "ok")
if behaviour == "exit":
    sys.exit("stand-in: model file is corrupt")
version = "not-" + manifest["model_version"] if behaviour == "wrong_version" else manifest["model_version"]
time.sleep(0.3)  # loading a model takes a moment


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/ping" and behaviour != "ping_fails":
            self.reply(200, {"status": "ok"})
        else:
            self.reply(500 if self.path == "/ping" else 404, {"error": "unhealthy"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        instances = json.loads(self.rfile.read(length))["instances"]
        time.sleep(0.002)
        self.reply(200, {
            "predictions": [
                {"h3_cell": i["h3_cell"], "hour_start": i["timestamp"][:13] + ":00:00+00:00",
                 "busyness": 1.5}
                for i in instances
            ],
            "model_version": version,
            "model_name": manifest["model_name"],
            "inference_id": uuid.uuid4().hex,
        })

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = False  # SIGTERM: finish running requests first


def graceful(signum, frame):
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, graceful)
server.serve_forever()
server.server_close()
'''

INSTANCES = [{"h3_cell": "8928308280fffff", "timestamp": "2025-03-01T10:15:00+00:00"}]
EXPECTED = [{"h3_cell": "8928308280fffff", "hour_start": "2025-03-01T10:00:00Z", "busyness": 1.5}]


def make_bundle(root: Path, version: str, stand_in: str = "ok") -> Path:
    bundle = root / f"bundle-{version}"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(
        json.dumps({"model_name": "hex_busyness", "model_version": version, "stand_in": stand_in})
    )
    (bundle / "model.ubj").write_bytes(b"stand-in model " + version.encode())
    (bundle / "features.parquet").write_bytes(b"stand-in features")
    return bundle


def post(url: str, timeout: float = 10) -> dict:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"instances": INSTANCES}).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------------- local target


@pytest.fixture
def local_endpoint(tmp_path: Path):
    """A local target on a free port, its state in a short path; stopped after the test."""
    server_script = tmp_path / "stand_in_server.py"
    server_script.write_text(STAND_IN_SERVER)
    state_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gb-endpoint-{uuid.uuid4().hex[:8]}"
    config = LocalEndpointConfig(
        state_dir=state_dir,
        port=free_port(),
        server_command=(
            sys.executable,
            str(server_script),
            "--model-dir",
            "{model_dir}",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ),
        startup_timeout_seconds=30,
        drain_timeout_seconds=10,
        stop_timeout_seconds=10,
    )
    endpoint = LocalEndpoint(config)
    try:
        yield endpoint
    finally:
        endpoint.stop()
        for path in sorted(state_dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        state_dir.rmdir()


class ContinuousClient:
    """Threads that POST to the fixed address back to back, one keep-alive session and one
    new connection per request each, counting versions answered and failures."""

    def __init__(self, url: str, threads: int = 4, instances: list[dict] = INSTANCES) -> None:
        self.url = url
        self.instances = instances
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True)
            for i in range(threads)
        ]

    def _run(self, keep_alive: bool) -> None:
        import requests

        session = requests.Session()
        session.trust_env = False
        while not self._stop.is_set():
            try:
                if keep_alive:
                    response = session.post(
                        f"{self.url}/invocations", json={"instances": self.instances}, timeout=10
                    )
                else:
                    response = requests.post(
                        f"{self.url}/invocations",
                        json={"instances": self.instances},
                        headers={"Connection": "close"},
                        timeout=10,
                        proxies={"http": "", "https": ""},
                    )
                response.raise_for_status()
                version = response.json()["model_version"]
                with self._lock:
                    self.versions[version] += 1
            except Exception as error:
                with self._lock:
                    self.failures.append(repr(error))

    def __enter__(self) -> ContinuousClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_for(self, version: str, count: int = 20, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.versions[version] >= count:
                    return
            time.sleep(0.02)
        raise AssertionError(f"fewer than {count} answers from model {version}: {self.versions}")


def test_local_replaces_the_model_without_failed_requests(local_endpoint, tmp_path):
    v1 = local_endpoint.deploy(make_bundle(tmp_path, "1"), SmokeTest(INSTANCES))
    assert v1.address == local_endpoint.config.url
    assert post(v1.address)["model_version"] == "1"
    first_pid = v1.details["server_pid"]

    with ContinuousClient(local_endpoint.config.url) as client:
        client.wait_for("1")
        for version in ("2", "3", "4"):
            record = local_endpoint.deploy(
                make_bundle(tmp_path, version), SmokeTest(INSTANCES, expected_predictions=EXPECTED)
            )
            assert record.previous_model_version == str(int(version) - 1)
            client.wait_for(version)

    assert client.failures == [], f"{len(client.failures)} failed requests: {client.failures[:5]}"
    assert post(local_endpoint.config.url)["model_version"] == "4"
    status = local_endpoint.status()
    assert status.serving and status.model_version == "4", status
    assert status.problems == ()
    assert not process_alive(_process(local_endpoint, first_pid)), "old server still runs"


def _process(endpoint: LocalEndpoint, pid: int):
    """A ProcessState for a pid this test saw (start time unknown: any process with it)."""
    from geo_busyness.deploy.local import ProcessState

    return ProcessState(pid=pid, started_at="", start_ticks=None, log_path="")


@pytest.mark.parametrize(
    ("stand_in", "reason"),
    [
        ("exit", "exited while starting"),
        ("ping_fails", "did not answer GET /ping"),
        ("wrong_version", "model_version is 'not-3'"),
    ],
)
def test_local_broken_bundle_is_rolled_back_and_old_model_keeps_serving(
    local_endpoint, tmp_path, stand_in, reason
):
    local_endpoint.config = LocalEndpointConfig(
        **{**local_endpoint.config.__dict__, "startup_timeout_seconds": 3}
    )
    local_endpoint.deploy(make_bundle(tmp_path, "2"), SmokeTest(INSTANCES))
    before = local_endpoint.status()

    with ContinuousClient(local_endpoint.config.url, threads=2) as client:
        client.wait_for("2", count=5)
        with pytest.raises(DeploymentFailed, match=reason) as failure:
            local_endpoint.deploy(make_bundle(tmp_path, "3", stand_in), SmokeTest(INSTANCES))
        client.wait_for("2", count=client.versions["2"] + 5)

    assert failure.value.rolled_back
    assert "Server log" in failure.value.reason
    assert client.failures == [], client.failures[:5]
    assert set(client.versions) == {"2"}, client.versions
    after = local_endpoint.status()
    assert (after.serving, after.model_version, after.server_pid) == (
        True,
        "2",
        before.server_pid,
    )
    live_servers = [
        p for p in (local_endpoint.state_dir / "logs").glob("server-*-3-*.log")
    ]  # the failed server's log exists, its process does not
    assert live_servers, "the failed server left no log to explain the failure"


def test_local_first_deploy_failure_leaves_nothing_running(local_endpoint, tmp_path):
    with pytest.raises(DeploymentFailed, match="exited while starting"):
        local_endpoint.deploy(make_bundle(tmp_path, "1", "exit"), SmokeTest(INSTANCES))
    assert not local_endpoint.state_path.exists()
    assert local_endpoint.status().proxy_pid is None
    with pytest.raises(OSError):
        post(local_endpoint.config.url, timeout=2)


def test_local_stop_leaves_no_process_and_a_later_process_finds_the_server(
    local_endpoint, tmp_path
):
    record = local_endpoint.deploy(make_bundle(tmp_path, "7"), SmokeTest(INSTANCES))
    # A later Dagster run is another process with another LocalEndpoint on the same state dir.
    later = LocalEndpoint(local_endpoint.config)
    status = later.status()
    assert (status.serving, status.model_version, status.server_pid) == (
        True,
        "7",
        record.details["server_pid"],
    )
    pids = [record.details[key] for key in ("server_pid", "proxy_pid", "supervisor_pid")]

    assert later.stop() is True

    assert [pid for pid in pids if process_alive(_process(later, pid))] == []
    assert not later.state_path.exists()
    assert not later.status().serving
    assert later.stop() is False
    with pytest.raises(OSError):
        post(local_endpoint.config.url, timeout=2)


def test_local_redeploys_after_the_server_died_without_a_supervisor(local_endpoint, tmp_path):
    import signal

    local_endpoint.config = dataclasses.replace(local_endpoint.config, supervise=False)
    record = local_endpoint.deploy(make_bundle(tmp_path, "1"), SmokeTest(INSTANCES))
    assert record.details["supervisor_pid"] is None
    os.killpg(record.details["server_pid"], signal.SIGKILL)
    wait_until(
        lambda: not process_alive(_process(local_endpoint, record.details["server_pid"])),
        "the killed server dies",
    )

    status = local_endpoint.status()
    assert not status.serving
    assert any("is not running" in p for p in status.problems), status.problems

    again = local_endpoint.deploy(make_bundle(tmp_path, "2"), SmokeTest(INSTANCES))
    assert again.previous_model_version is None  # the dead server was not serving
    assert again.details["proxy_pid"] == record.details["proxy_pid"]  # same fixed address
    assert post(local_endpoint.config.url)["model_version"] == "2"


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting until {what}"
        time.sleep(0.05)


def answers(url: str, version: str) -> bool:
    try:
        return post(url, timeout=2)["model_version"] == version
    except OSError:
        return False


# The supervisor looks every 0.5 s; a restart then starts a Python process (the stand-in
# server, ~0.3 s of "model loading", or the proxy: uvicorn and httpx imported) and waits for
# it to answer. Measured 0.85-2.74 s over 27 runs on the 2-core machine while a concurrent
# test suite ran (load average 2-4). 10 s leaves room for a loaded machine and still fails a
# supervisor that does not look every 0.5 s or a restart that waits for a timeout.
RESTART_BOUND_S = 10.0


def wait_for_version(
    url: str, version: str, since: float, timeout: float = 30.0
) -> tuple[float, list[tuple[int, str]]]:
    """Seconds from ``since`` until ``url`` answers with model ``version``, and the HTTP
    refusals (status, headers and body) answered meanwhile; a refused connection is no answer."""
    import urllib.error

    refusals: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if post(url, timeout=2)["model_version"] == version:
                return time.monotonic() - since, refusals
        except urllib.error.HTTPError as error:
            with error:
                refusals.append((error.code, f"{error.headers}\n{error.read().decode()}"))
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer with model {version} within {timeout:.0f} s")


def test_a_killed_server_or_proxy_is_restarted_within_seconds_and_reported(
    local_endpoint, tmp_path
):
    import signal

    config = local_endpoint.config
    url = config.url
    record = local_endpoint.deploy(make_bundle(tmp_path, "1"), SmokeTest(INSTANCES))
    supervisor = record.details["supervisor_pid"]
    assert process_alive(_process(local_endpoint, supervisor))
    assert record.details["restarts_since_previous_deploy"] == []
    ports = {str(record.details["server_port"])}
    back_s: dict[str, float] = {}
    outage_refusals: list[tuple[int, str]] = []

    killed_at = time.monotonic()
    os.kill(record.details["server_pid"], signal.SIGKILL)
    back_s["server"], refusals = wait_for_version(url, "1", since=killed_at)
    outage_refusals += refusals
    # the supervisor switches the proxy first, then writes its state and logs the restart
    wait_until(lambda: len(local_endpoint.status().restarts) == 1, "the restart is logged")
    status = local_endpoint.status()
    assert status.serving and status.server_pid != record.details["server_pid"], status
    assert status.problems == ()
    (restart,) = status.restarts
    assert (restart["part"], restart["pid"], restart["ok"]) == (
        "server",
        record.details["server_pid"],
        True,
    )
    ports.add(str(status.server_port))

    # Now the server is the supervisor's child: its exit status is known.
    killed_at = time.monotonic()
    os.kill(status.server_pid, signal.SIGKILL)
    back_s["server, 2nd"], refusals = wait_for_version(url, "1", since=killed_at)
    outage_refusals += refusals
    wait_until(lambda: len(local_endpoint.status().restarts) == 2, "the second restart")
    assert local_endpoint.status().restarts[1]["reason"] == "killed by signal SIGKILL"
    ports.add(str(local_endpoint.status().server_port))

    killed_at = time.monotonic()
    os.kill(record.details["proxy_pid"], signal.SIGKILL)
    back_s["proxy"], refusals = wait_for_version(url, "1", since=killed_at)
    outage_refusals += refusals
    wait_until(lambda: len(local_endpoint.status().restarts) == 3, "the proxy restart")
    status = local_endpoint.status()
    assert status.proxy_pid != record.details["proxy_pid"] and status.serving, status
    assert [r["part"] for r in status.restarts] == ["server", "server", "proxy"]
    print(
        "back on the fixed address after kill -9: "
        + ", ".join(f"{part} {seconds:.2f} s" for part, seconds in back_s.items())
        + f"; {len(outage_refusals)} HTTP refusals meanwhile: "
        + f"{dict(Counter(code for code, _ in outage_refusals))}, "
        + f"{sorted({(code, text.rsplit(chr(10), 1)[-1]) for code, text in outage_refusals})}"
    )
    assert all(seconds < RESTART_BOUND_S for seconds in back_s.values()), back_s

    # What the proxy answered while no server ran: a 502 that names no internal port (a
    # restarted proxy forwards to the live server from its first request: no 503 either).
    assert {code for code, _ in outage_refusals} <= {502}, outage_refusals[:3]
    leaks = [(code, text) for code, text in outage_refusals if any(p in text for p in ports)]
    assert leaks == [], f"an internal port {sorted(ports)} in a refusal: {leaks[:2]}"

    # Where a user sees it: the health the sensor records on endpoint_deployment ...
    health = LocalEndpointTarget(
        port=config.port,
        state_dir=str(config.state_dir),
        server_command=list(config.server_command),
    ).health()
    assert (health["serving"], health["supervised"], health["problems"]) == (True, True, [])
    assert health["restarts_since_deploy"] == 3
    last = health["last_restart"]
    assert (last["part"], last["pid"], last["ok"]) == ("proxy", record.details["proxy_pid"], True)
    assert "exit status unknown" in last["reason"], last  # the deploy started that proxy

    # ... and the next deployment (its asset's metadata) reports what happened since the
    # previous one, then counts afresh.
    again = local_endpoint.deploy(make_bundle(tmp_path, "2"), SmokeTest(INSTANCES))
    assert [r["part"] for r in again.details["restarts_since_previous_deploy"]] == [
        "server",
        "server",
        "proxy",
    ]
    assert again.details["supervisor_pid"] == supervisor
    assert local_endpoint.status().restarts == ()


def test_a_server_that_cannot_start_again_is_reported_and_retried_with_backoff(
    local_endpoint, tmp_path
):
    import signal

    bundle = make_bundle(tmp_path, "1")
    record = local_endpoint.deploy(bundle, SmokeTest(INSTANCES))
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "stand_in": "exit"}))
    os.kill(record.details["server_pid"], signal.SIGKILL)

    wait_until(lambda: len(local_endpoint.status().restarts) >= 2, "two failed restarts")
    status = local_endpoint.status()
    assert not status.serving
    failed = status.restarts[0]
    assert failed["ok"] is False and "exited while starting" in failed["error"], failed

    # Fixing the bundle is enough: the next retry serves it again.
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    wait_until(lambda: answers(local_endpoint.config.url, "1"), "the repaired bundle serves")
    # the supervisor switches the proxy first, then logs the restart
    wait_until(lambda: local_endpoint.status().restarts[-1]["ok"] is True, "the restart is logged")


def test_stop_also_stops_the_supervisor(local_endpoint, tmp_path):
    record = local_endpoint.deploy(make_bundle(tmp_path, "1"), SmokeTest(INSTANCES))
    supervisor = _process(local_endpoint, record.details["supervisor_pid"])
    assert local_endpoint.stop() is True
    wait_until(lambda: not process_alive(supervisor), "the supervisor exits")
    with pytest.raises(OSError):
        post(local_endpoint.config.url, timeout=2)


def real_bundle(root: Path, version: str, seed: int) -> tuple[Path, list[dict], list[dict]]:
    """A demo bundle for the real server as ``version``, two smoke instances and what
    ``XGBRegressor.predict`` says for them in process."""
    import pandas as pd
    import xgboost as xgb

    from geo_busyness.serving.demo import write_demo_bundle

    bundle = write_demo_bundle(
        root / f"real-{version}", rings=1, hours=3, n_estimators=20, seed=seed
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "model_version": version}))
    snapshot = pd.read_parquet(bundle / "features.parquet").head(2)
    model = xgb.XGBRegressor()
    model.load_model(bundle / "model.ubj")
    predicted = predict_orders(model, snapshot, manifest["feature_names"])
    instances = [
        {"h3_cell": cell, "timestamp": (hour + pd.Timedelta(minutes=30)).isoformat()}
        for cell, hour in zip(snapshot["h3_cell"], snapshot["hour_start"], strict=True)
    ]
    expected = [
        {"h3_cell": cell, "hour_start": hour.isoformat(), "busyness": float(value)}
        for cell, hour, value in zip(
            snapshot["h3_cell"], snapshot["hour_start"], predicted, strict=True
        )
    ]
    return bundle, instances, expected


def test_real_server_is_replaced_under_load_and_a_corrupt_bundle_is_refused(tmp_path):
    """The same cycle with ``python -m geo_busyness.serving`` (the default command)."""
    state_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gb-endpoint-{uuid.uuid4().hex[:8]}"
    endpoint = LocalEndpoint(
        LocalEndpointConfig(state_dir=state_dir, port=free_port(), startup_timeout_seconds=90)
    )
    v1, v1_instances, v1_expected = real_bundle(tmp_path, "1", seed=0)
    v2, v2_instances, v2_expected = real_bundle(tmp_path, "2", seed=1)
    corrupt, _, _ = real_bundle(tmp_path, "3", seed=2)
    (corrupt / "model.ubj").write_bytes(b"not a model")
    try:
        endpoint.deploy(v1, SmokeTest(v1_instances, expected_predictions=v1_expected))
        with ContinuousClient(endpoint.config.url, threads=2, instances=v1_instances) as client:
            client.wait_for("1", count=5)
            endpoint.deploy(v2, SmokeTest(v2_instances, expected_predictions=v2_expected))
            client.wait_for("2", count=5)
            with pytest.raises(DeploymentFailed, match="exited while starting"):
                endpoint.deploy(corrupt, SmokeTest(v2_instances))
            client.wait_for("2", count=client.versions["2"] + 5)
        assert client.failures == [], client.failures[:5]
        assert set(client.versions) == {"1", "2"}, client.versions
        assert endpoint.status().model_version == "2"
    finally:
        endpoint.stop()
        for path in sorted(state_dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        state_dir.rmdir()


def test_a_dagster_asset_deploys_through_the_local_target_resource(local_endpoint, tmp_path):
    """The asset sees only ``EndpointTarget``; the resource is the local one."""
    bundle = make_bundle(tmp_path, "9")

    @dg.asset
    def deployed_model(endpoint: EndpointTarget) -> dg.MaterializeResult:
        record = endpoint.deploy(bundle, INSTANCES, EXPECTED)
        return dg.MaterializeResult(metadata={"model_version": record.model_version})

    config = local_endpoint.config
    resource = LocalEndpointTarget(
        port=config.port,
        state_dir=str(config.state_dir),
        server_command=list(config.server_command),
    )
    result = dg.materialize([deployed_model], resources={"endpoint": resource})

    assert result.success
    metadata = result.asset_materializations_for_node("deployed_model")[0].metadata
    assert metadata["model_version"].value == "9"
    assert post(config.url)["model_version"] == "9"
    assert resource.status().model_version == "9"


def test_the_health_sensor_observes_the_deployment_when_its_health_changes(
    local_endpoint, tmp_path
):
    import signal

    from geo_busyness.sensors import ENDPOINT_KEY, endpoint_health_sensor

    config = local_endpoint.config
    resource = LocalEndpointTarget(
        port=config.port,
        state_dir=str(config.state_dir),
        server_command=list(config.server_command),
    )
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"endpoint": resource}
        )
        return endpoint_health_sensor(context)

    assert "nothing deployed yet" in tick(None).skip_message
    record = local_endpoint.deploy(make_bundle(tmp_path, "5"), SmokeTest(INSTANCES))
    champion = dg.AssetKey(["regina", "champion_model"])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(champion, metadata={"version": "5"})
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            ENDPOINT_KEY, metadata={"cities": dg.MetadataValue.json({"regina": {}})}
        )
    )

    healthy = tick(None)
    (observation,) = healthy.asset_events
    assert observation.metadata["serving"].value is True
    assert observation.metadata["model_version"].value == "5"
    assert observation.metadata["restarts_since_deploy"].value == 0
    assert observation.metadata["problems"].value == []
    assert "unchanged: serving model version 5" in tick(healthy.cursor).skip_message

    # A new champion that is not deployed (yet): the endpoint serves another version.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(champion, metadata={"version": "6"})
    )
    stale = tick(healthy.cursor)
    (observation,) = stale.asset_events
    assert observation.metadata["problems"].value == ["serves model version 5, the champion is 6"]
    instance.report_runless_asset_event(
        dg.AssetMaterialization(champion, metadata={"version": "5"})
    )
    assert tick(stale.cursor).asset_events[0].metadata["problems"].value == []

    os.kill(record.details["server_pid"], signal.SIGKILL)
    wait_until(lambda: answers(config.url, "5"), "the supervisor restarted the server")
    after_restart = tick(healthy.cursor)
    (observation,) = after_restart.asset_events
    assert observation.metadata["restarts_since_deploy"].value == 1
    assert observation.metadata["health"].value["last_restart"]["part"] == "server"

    local_endpoint.stop()
    (down,) = tick(after_restart.cursor).asset_events
    assert down.metadata["serving"].value is False
    assert down.description.startswith("NOT serving")


# ---------------------------------------------------------------------- SageMaker target

ROLE_ARN = "arn:aws:iam::123456789012:role/geo-busyness-sagemaker"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/geo-busyness:test"


@pytest.fixture
def aws(moto_server, monkeypatch):
    """Fake credentials through the default chain, a fresh bucket, a unique endpoint name."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return {
        "url": moto_server,
        "bucket": bucket,
        "endpoint_name": f"hex-busyness-{uuid.uuid4().hex[:8]}",
    }


def unique_instances() -> list[dict]:
    """Smoke instances no other test sends: moto's server caches a canned answer per request
    body, whatever the endpoint (it does not read EndpointName from the URL path)."""
    return [{**INSTANCES[0], "request": uuid.uuid4().hex}]


def queue_invoke_answer(moto_url: str, body: dict) -> None:
    """What moto's invoke_endpoint returns next (it does not run the container)."""
    request = urllib.request.Request(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(
            {"results": [{"Body": json.dumps(body), "ContentType": "application/json"}]}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.status in (200, 201), f"moto refused the canned answer: {response.status}"


def sagemaker_endpoint(aws: dict) -> SageMakerEndpoint:
    return SageMakerEndpoint(
        SageMakerConfig(
            endpoint_name=aws["endpoint_name"],
            role_arn=ROLE_ARN,
            image_uri=IMAGE_URI,
            model_bucket=aws["bucket"],
            model_prefix="deployments",
            capture_prefix="capture",
            region="us-east-1",
            endpoint_url=aws["url"],
            s3_endpoint_url=aws["url"],
            poll_delay_seconds=0.05,
            wait_timeout_seconds=10,
        )
    )


def test_sagemaker_creates_the_endpoint_with_data_capture(aws, tmp_path):
    import boto3

    bundle = make_bundle(tmp_path, "5")
    queue_invoke_answer(
        aws["url"],
        {
            "predictions": EXPECTED,
            "model_version": "5",
            "model_name": "hex_busyness",
            "inference_id": "x",
        },
    )
    record = sagemaker_endpoint(aws).deploy(
        bundle, SmokeTest(unique_instances(), expected_predictions=EXPECTED)
    )

    client = boto3.client("sagemaker", endpoint_url=aws["url"], region_name="us-east-1")
    described = client.describe_endpoint(EndpointName=aws["endpoint_name"])
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == record.details["endpoint_config_name"]
    assert described["DataCaptureConfig"]["EnableCapture"] is True
    assert described["DataCaptureConfig"]["DestinationS3Uri"] == f"s3://{aws['bucket']}/capture"
    config = client.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 100
    assert {o["CaptureMode"] for o in config["DataCaptureConfig"]["CaptureOptions"]} == {
        "Input",
        "Output",
    }
    model = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["Image"] == IMAGE_URI
    assert model["ExecutionRoleArn"] == ROLE_ARN
    model_data = model["PrimaryContainer"]["ModelDataUrl"]
    assert model_data == record.details["model_data_url"]

    bucket, key = model_data.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=aws["url"], region_name="us-east-1")
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["features.parquet", "manifest.json", "model.ubj"]
    assert (record.model_version, record.previous_model_version) == ("5", None)


def test_sagemaker_failed_smoke_test_removes_the_new_endpoint(aws, tmp_path):
    import boto3

    queue_invoke_answer(aws["url"], {"predictions": EXPECTED, "model_version": "4"})
    with pytest.raises(DeploymentFailed, match="model_version is '4', expected '5'") as failure:
        sagemaker_endpoint(aws).deploy(make_bundle(tmp_path, "5"), SmokeTest(unique_instances()))

    assert failure.value.rolled_back
    client = boto3.client("sagemaker", endpoint_url=aws["url"], region_name="us-east-1")
    with pytest.raises(client.exceptions.ClientError, match="Could not find endpoint"):
        client.describe_endpoint(EndpointName=aws["endpoint_name"])


def make_city_bundle(root: Path, versions: dict[str, str]) -> Path:
    """A stand-in multi-city bundle: ``cities.json`` and one stand-in bundle per city."""
    bundle = root / "cities-bundle"
    entries = []
    for city, version in versions.items():
        member = make_bundle(bundle / "cities", version)
        member.rename(bundle / "cities" / city)
        entries.append({"city": city, "path": f"cities/{city}"})
    for city in versions:
        manifest = json.loads((bundle / "cities" / city / "manifest.json").read_text())
        manifest["model_name"] = f"busyness-{city}"
        (bundle / "cities" / city / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "cities.json").write_text(json.dumps({"format": 1, "members": entries}))
    return bundle


def test_sagemaker_deploys_a_city_bundle_and_reports_every_member(aws, tmp_path):
    bundle = make_city_bundle(tmp_path, {"regina": "3", "saskatoon": "12"})
    rows = [{**EXPECTED[0], "city": "saskatoon", "model_version": "12"}]
    queue_invoke_answer(
        aws["url"],
        {"predictions": rows, "model_version": "regina=3,saskatoon=12", "inference_id": "x"},
    )
    target = sagemaker_endpoint(aws)
    record = target.deploy(bundle, SmokeTest(unique_instances(), expected_predictions=rows))
    members = {
        "regina": {"model_name": "busyness-regina", "model_version": "3"},
        "saskatoon": {"model_name": "busyness-saskatoon", "model_version": "12"},
    }
    assert (record.model_version, record.members) == ("regina=3,saskatoon=12", members)

    import boto3

    bucket, key = record.details["model_data_url"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=aws["url"], region_name="us-east-1")
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert "cities.json" in tar.getnames()
        assert "cities/saskatoon/model.ubj" in tar.getnames()
    status = target.status()
    assert status is not None and status.status == "InService"
    assert (status.model_version, status.members) == ("regina=3,saskatoon=12", members)
