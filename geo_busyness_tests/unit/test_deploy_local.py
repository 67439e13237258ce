"""Local target bookkeeping: the state file, stale pids, the lock, the server command.

The full deploy/replace/rollback cycle with real processes is in
``integration/test_deployment.py``; these tests start at most a short-lived Python process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geo_busyness.deploy import DeploymentFailed, LocalEndpoint, LocalEndpointConfig
from geo_busyness.deploy.local import (
    EndpointState,
    ProcessState,
    ProxyState,
    ServerState,
    process_alive,
)

pytestmark = pytest.mark.unit


def this_process() -> ProcessState:
    from geo_busyness.deploy.local import _start_ticks

    return ProcessState(
        pid=os.getpid(), started_at="now", start_ticks=_start_ticks(os.getpid()), log_path="x"
    )


def dead_process() -> ProcessState:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return ProcessState(pid=child.pid, started_at="then", start_ticks=None, log_path="x")


def server(process: ProcessState, version: str = "3") -> ServerState:
    return ServerState(
        process=process, port=40001, model_name="m", model_version=version, bundle_dir="/b"
    )


def proxy(process: ProcessState, control: str = "/nonexistent/proxy.sock") -> ProxyState:
    return ProxyState(process=process, host="127.0.0.1", port=8080, control_socket=control)


@pytest.fixture
def endpoint(tmp_path: Path) -> LocalEndpoint:
    return LocalEndpoint(
        LocalEndpointConfig(state_dir=tmp_path / "state", lock_timeout_seconds=0.3)
    )


def test_state_round_trips_through_the_file_and_empty_state_removes_it(endpoint):
    state = EndpointState(proxy=proxy(this_process()), server=server(this_process()))
    endpoint.write_state(state)
    assert endpoint.read_state() == state
    on_disk = json.loads(endpoint.state_path.read_text())
    assert on_disk["server"]["model_version"] == "3"
    assert on_disk["server"]["process"]["pid"] == os.getpid()
    assert not list(endpoint.state_dir.glob("*.tmp")), "the temporary file was left behind"

    endpoint.write_state(EndpointState())
    assert not endpoint.state_path.exists()
    assert endpoint.read_state() == EndpointState()


def test_unreadable_state_is_a_clear_failure(endpoint):
    endpoint.state_dir.mkdir(parents=True)
    endpoint.state_path.write_text('{"server": {"pid": 1}}')
    with pytest.raises(DeploymentFailed, match=r"endpoint\.json is unreadable"):
        endpoint.read_state()


def test_dead_and_reused_pids_are_not_alive():
    assert process_alive(this_process())
    assert not process_alive(dead_process())
    if this_process().start_ticks is not None:  # Linux: pid reuse is detected
        reused = dataclasses.replace(this_process(), start_ticks=this_process().start_ticks + 1)
        assert not process_alive(reused)


def test_status_reports_stale_state_without_failing(endpoint):
    endpoint.write_state(EndpointState(proxy=proxy(dead_process()), server=server(dead_process())))
    status = endpoint.status()
    assert not status.serving
    assert status.model_version is None
    assert len(status.problems) == 2
    assert all(p.endswith("is not running") for p in status.problems), status.problems


def test_status_notices_a_proxy_that_does_not_answer(endpoint):
    endpoint.write_state(EndpointState(proxy=proxy(this_process()), server=server(this_process())))
    status = endpoint.status()
    assert not status.serving
    assert status.model_version == "3"
    assert any("control socket does not answer" in p for p in status.problems), status.problems
    # a live endpoint that nothing supervises says so
    assert any(p.startswith("no supervisor runs") for p in status.problems), status.problems


def test_stop_with_only_stale_state_clears_it(endpoint):
    endpoint.write_state(EndpointState(proxy=proxy(dead_process()), server=server(dead_process())))
    assert endpoint.stop() is False
    assert not endpoint.state_path.exists()


def test_a_second_deployment_waits_for_the_lock_then_fails_clearly(endpoint):
    endpoint.state_dir.mkdir(parents=True)
    with open(endpoint.state_dir / "deploy.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DeploymentFailed, match=r"still holds deploy\.lock"):
            endpoint.stop()


def test_server_command_placeholders_are_filled_and_unknown_ones_rejected(tmp_path):
    config = LocalEndpointConfig(
        state_dir=tmp_path,
        server_command=("{python}", "serve", "--model-dir", "{model_dir}", "--port", "{port}"),
    )
    command = LocalEndpoint(config)._server_command(Path("/bundle"), 4321)
    assert command == [sys.executable, "serve", "--model-dir", "/bundle", "--port", "4321"]

    broken = LocalEndpoint(dataclasses.replace(config, server_command=("serve", "{modeldir}")))
    with pytest.raises(DeploymentFailed, match="unknown placeholder 'modeldir'"):
        broken._server_command(Path("/bundle"), 4321)


def test_a_state_dir_too_deep_for_the_control_socket_fails_before_starting(tmp_path):
    deep = tmp_path / ("d" * 120)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"model_name": "m", "model_version": "1"}))
    from geo_busyness.deploy import SmokeTest

    endpoint = LocalEndpoint(LocalEndpointConfig(state_dir=deep))
    with pytest.raises(DeploymentFailed, match="too deep for the proxy's control socket"):
        endpoint.deploy(bundle, SmokeTest([{"h3_cell": "c", "timestamp": "2025-01-01T00:00:00Z"}]))
    assert not endpoint.state_path.exists()
