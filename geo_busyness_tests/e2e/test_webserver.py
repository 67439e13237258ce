"""The code location as users meet it: validated by the Dagster CLI and served by the real webserver."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from geo_busyness.stack.services import free_port, stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPECTED_ASSETS = {
    "raw_courier_pings",
    "clean_courier_pings",
    "quarantined_pings",
    "restaurants",
    "restaurant_clusters",
    "hex_hourly_busyness",
    "busyness_features",
    "training_set",
    "busyness_model",
    "model_evaluation",
    "champion_model",
    "busyness_forecast",
    "endpoint_deployment",
    "drift_report",
    "unrouted_pings",
}


@pytest.fixture
def dagster_env(tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "GEO_BUSYNESS_DATA_DIR": str(tmp_path / "data"),
    }
    (tmp_path / "home").mkdir()
    return env


def test_definitions_validate(dagster_env):
    result = subprocess.run(
        [BIN / "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=dagster_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_webserver_serves_the_asset_graph_with_checks(dagster_env):
    port = free_port()
    server = subprocess.Popen(
        [BIN / "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=dagster_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"webserver did not start:\n{server.stdout.read()}"
                    ) from None
                time.sleep(1)
        locations = graphql(
            port,
            "{ workspaceOrError { ... on Workspace { locationEntries { name "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }",
        )
        entries = locations["data"]["workspaceOrError"]["locationEntries"]
        assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
            ("geo_busyness", "RepositoryLocation")
        ]
        nodes = graphql(
            port,
            "{ assetNodes { assetKey { path } groupName owners { ... on TeamAssetOwner { team } } "
            "description assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }",
        )
        by_name = {n["assetKey"]["path"][-1]: n for n in nodes["data"]["assetNodes"]}
        assert set(by_name) == EXPECTED_ASSETS
        assert all(n["description"] and n["owners"] for n in by_name.values())
        # The packaged catalog's one city: its assets under its key, in its own group.
        prefixes = {tuple(n["assetKey"]["path"][:-1]) for n in nodes["data"]["assetNodes"]}
        assert prefixes == {("regina",), ()}
        assert {n["groupName"] for n in by_name.values()} == {"regina", "landing", "deployment"}
        checks = {
            c["name"]: c["blocking"]
            for c in by_name["clean_courier_pings"]["assetChecksOrError"]["checks"]
        }
        assert checks == {
            "clean_pings_match_contract": True,
            "rows_are_conserved": True,
            "quarantine_share_is_low": True,
        }
        gates = {
            c["name"]: c["blocking"]
            for c in by_name["model_evaluation"]["assetChecksOrError"]["checks"]
        }
        assert gates == {
            "candidate_beats_every_baseline": True,
            "candidate_not_worse_than_champion": True,
            "candidate_predictions_are_sane": True,
        }
    finally:
        stop_process_group(server)
