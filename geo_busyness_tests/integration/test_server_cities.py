"""A two-city bundle (resolutions 7 and 8, two models) served by the real server process, and
deployed behind the local target's fixed address with a per-prediction smoke check."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import h3
import pytest

from geo_busyness.core.model import predict_orders
from geo_busyness.deploy import LocalEndpoint, LocalEndpointConfig, SmokeTest
from geo_busyness.serving.bundle import CityMember, write_city_bundle
from geo_busyness.serving.demo import DEMO_HORIZON_START, demo_city_members
from geo_busyness.stack.services import LOOPBACK, free_port
from geo_busyness_tests.integration.test_server import request, running_server, wait_for_ping

pytestmark = pytest.mark.integration

VERSIONS = {"regina": "3", "saskatoon": "12"}


@pytest.fixture(scope="module")
def members() -> dict[str, CityMember]:
    return demo_city_members(rings=1, hours=3, n_estimators=20)


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory, members) -> Path:
    return write_city_bundle(tmp_path_factory.mktemp("cities") / "bundle", members)


@pytest.fixture(scope="module")
def server(city_dir, tmp_path_factory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("cities-log") / "serve.log"
    args = ["--model-dir", str(city_dir), "--host", LOOPBACK, "--port", str(port)]
    with running_server(log, args) as process:
        wait_for_ping(port, process, log)
        yield port


def smoke_rows(members) -> tuple[list[dict], list[dict]]:
    """Two cells and one coordinate per city, and what each city's model says for them."""
    instances, expected = [], []
    for city, member in members.items():
        rows = member.features.iloc[[0, 4, 8]].reset_index(drop=True)
        predicted = predict_orders(member.model, rows, member.manifest.feature_names)
        for i, (cell, hour) in enumerate(zip(rows["h3_cell"], rows["hour_start"], strict=True)):
            if i == 2:
                lat, lon = h3.cell_to_latlng(cell)
                instances.append({"lat": lat, "lon": lon, "timestamp": hour.isoformat()})
            else:
                instances.append({"h3_cell": cell, "timestamp": hour.isoformat()})
            expected.append(
                {
                    "h3_cell": cell,
                    "hour_start": hour.isoformat(),
                    "busyness": float(predicted[i]),
                    "city": city,
                    "model_version": VERSIONS[city],
                }
            )
    return instances, expected


def post(port: int, instances: list[dict]) -> tuple[int, dict]:
    status, _, body = request(
        port,
        "POST",
        "/invocations",
        json.dumps({"instances": instances}).encode(),
        {"Content-Type": "application/json"},
    )
    return status, json.loads(body)


def test_one_request_answers_both_cities_over_http(server, members):
    instances, expected = smoke_rows(members)
    status, answer = post(server, instances)
    assert status == 200, answer
    assert answer["model_version"] == "regina=3,saskatoon=12"
    assert answer["model_versions"] == VERSIONS
    got = answer["predictions"]
    assert [(p["h3_cell"], p["city"], p["model_version"]) for p in got] == [
        (e["h3_cell"], e["city"], e["model_version"]) for e in expected
    ]
    for prediction, want in zip(got, expected, strict=True):
        assert prediction["busyness"] == pytest.approx(want["busyness"], abs=1e-6)
    assert SmokeTest(instances, expected_predictions=expected).problems(json.dumps(answer)) == []


def test_unknown_cells_get_a_4xx_and_the_server_keeps_serving(server, members):
    start = DEMO_HORIZON_START.isoformat()
    for instance, field in (
        ({"h3_cell": h3.latlng_to_cell(45.0, -75.0, 7), "timestamp": start}, "h3_cell"),
        ({"h3_cell": h3.latlng_to_cell(45.0, -75.0, 8), "timestamp": start}, "h3_cell"),
        ({"lat": 45.0, "lon": -75.0, "timestamp": start}, "lat"),
    ):
        status, answer = post(server, [instance])
        assert status == 422, answer
        assert answer["error"]["field"] == field
    status, _ = post(server, smoke_rows(members)[0])
    assert status == 200


def test_the_local_target_deploys_a_city_bundle_and_reports_every_member(city_dir, members):
    state_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gb-cities-{uuid.uuid4().hex[:8]}"
    endpoint = LocalEndpoint(
        LocalEndpointConfig(state_dir=state_dir, port=free_port(), startup_timeout_seconds=90)
    )
    instances, expected = smoke_rows(members)
    try:
        record = endpoint.deploy(city_dir, SmokeTest(instances, expected_predictions=expected))
        assert record.model_version == "regina=3,saskatoon=12"
        assert record.members == {
            "regina": {"model_name": "busyness-regina", "model_version": "3"},
            "saskatoon": {"model_name": "busyness-saskatoon", "model_version": "12"},
        }
        status = endpoint.status()
        assert status.serving and status.members == record.members
        # a later process reads the members back from the state file
        later = LocalEndpoint(endpoint.config).status()
        assert later.members == record.members
    finally:
        endpoint.stop()
        for path in sorted(state_dir.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        state_dir.rmdir()
