"""The ``stack`` environment end to end: every asset of the graph materializes with the landing
zone, the asset storage and the drift reports in a SeaweedFS bucket and MLflow behind a real
``mlflow server`` whose artifacts go to the same bucket; afterwards each of them is listed in
the bucket through boto3, not taken on the platform's word.

MLflow is reached as ``http://alice:<password>@127.0.0.1:<port>`` (the server has no
authentication and ignores the credentials; the client sends them as it would to a real one):
afterwards the password is in no metadata value, no event of any run, nothing printed, and no
file under the Dagster instance's directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from geo_busyness.core.redact import MASK
from geo_busyness.definitions import defs
from geo_busyness.resources.environment import build_resources
from geo_busyness.runner import (
    day_range,
    deploy_endpoint,
    forecast_next_day,
    materialize_days,
    train_and_promote,
)
from geo_busyness.simulate import SimulationConfig, simulate
from geo_busyness.stack.local_stack import stack_env, start_mlflow_server, wait_http
from geo_busyness.stack.services import free_port, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.slow]

# As in test_training.py: enough history for a candidate that passes the promotion gates.
# Ops are named without the city prefix: train_and_promote adds it.
DAYS = 21
START = dt.date(2026, 9, 1)
PASSWORD = "Pa55-w0rd-in-the-uri"
CITY = "regina"
TRAINING_RUN_CONFIG = {
    "ops": {
        "busyness_model": {
            "config": {"n_trials": 3, "time_budget_s": 120, "train_poc_baseline": False}
        }
    }
}


@pytest.fixture(scope="module")
def stack(seaweedfs, tmp_path_factory):
    """A bucket on the session's SeaweedFS, an ``mlflow server`` storing artifacts in it, and
    the environment ``geo-busyness stack up`` gives Dagster (with that bucket)."""
    root = tmp_path_factory.mktemp("stack")
    bucket = seaweedfs.make_bucket(f"stack-{root.name.lower().replace('_', '-')}"[:63])
    ports = {"mlflow": free_port(), "endpoint": free_port()}
    log = root / "mlflow.log"
    server = start_mlflow_server(root / "mlflow", ports["mlflow"], seaweedfs, bucket, log)
    try:
        env = {**stack_env(root, ports, seaweedfs), "GEO_BUSYNESS_BUCKET": bucket}
        wait_http(f"{env['MLFLOW_TRACKING_URI']}/health", server, "mlflow server", log)
        env["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"].replace(
            "http://", f"http://alice:{PASSWORD}@"
        )
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            patch.delenv("GEO_BUSYNESS_ENDPOINT_TARGET", raising=False)
            yield seaweedfs, bucket
    finally:
        stop_process_group(server)


@pytest.fixture(scope="module")
def graph(stack):
    """Simulated days landed in S3, then every asset materialized through the code location's
    own assets and checks with the resources the ``stack`` environment builds."""
    stack_defs = dg.Definitions(
        assets=list(defs.assets),
        asset_checks=list(defs.asset_checks),
        jobs=list(defs.jobs),
        resources=build_resources(),
    )
    with dg.build_resources({"landing_zone": stack_defs.resources["landing_zone"]}) as built:
        simulate(
            SimulationConfig(start_date=START, days=DAYS, pings_per_day=6_000),
            put=built.landing_zone.write,
        )
    try:
        days = day_range(START, DAYS)
        printed = io.StringIO()
        with (
            dg.instance_for_test() as instance,
            contextlib.redirect_stdout(printed),
            contextlib.redirect_stderr(printed),
        ):
            data = materialize_days(days, stack_defs, instance, log=lambda _: None)
            training = train_and_promote(
                stack_defs, instance, run_config=TRAINING_RUN_CONFIG, log=lambda _: None
            )
            forecast = forecast_next_day(days[-1], stack_defs, instance, log=lambda _: None)
            deployment, deploy_error = deploy_endpoint(stack_defs, instance, log=lambda _: None)
            drift = dg.materialize(
                [*stack_defs.assets, *stack_defs.asset_checks],
                selection=dg.AssetSelection.assets(dg.AssetKey([CITY, "drift_report"])),
                partition_key=days[-1],
                instance=instance,
                resources=stack_defs.resources,
            )
            secrets = _where_the_password_is(instance)
            tracking = dg.build_resources(
                {"mlflow_tracking": stack_defs.resources["mlflow_tracking"]}
            )
            with tracking as built:
                yield {
                    "secrets": {**secrets, "printed": PASSWORD in printed.getvalue()},
                    "data": data,
                    "training": training,
                    "forecast": forecast,
                    "deployment": deployment,
                    "deploy_error": deploy_error,
                    "drift_success": drift.success,
                    "days": days,
                    "tracking": built.mlflow_tracking.for_city(CITY),
                }
    finally:
        # also when a step above failed: no endpoint process outlives the test
        with dg.build_resources({"endpoint": stack_defs.resources["endpoint"]}) as built:
            built.endpoint.stop()


def _where_the_password_is(instance: dg.DagsterInstance) -> dict:
    """The tracking URI shown by the training assets, and every event and instance file that
    holds the password."""
    shown = {}
    for asset in ("busyness_model", "model_evaluation", "champion_model"):
        event = instance.get_latest_materialization_event(dg.AssetKey([CITY, asset]))
        metadata = event.asset_materialization.metadata if event else {}
        shown[asset] = {name: str(value.value) for name, value in metadata.items()}
    events = [entry for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
    needle = PASSWORD.encode()
    root = Path(instance.root_directory)
    return {
        "metadata": shown,
        "events": [
            entry.dagster_event.event_type_value if entry.dagster_event else entry.user_message
            for entry in events
            if PASSWORD in dg.serialize_value(entry)
        ],
        "files": [
            str(path) for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()
        ],
    }


def keys(stack, prefix: str) -> list[str]:
    server, bucket = stack
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_every_asset_materializes_and_the_model_is_promoted_and_deployed(graph):
    assert graph["data"].city == CITY
    assert not graph["data"].failed_checks
    assert graph["training"].error is None
    assert graph["training"].champion_version == "1"
    assert graph["forecast"]["rows"] > 0
    assert graph["deploy_error"] is None
    assert graph["deployment"]["model_version"] == "1"
    assert graph["drift_success"]


def test_landing_zone_is_in_the_bucket(stack, graph):
    landed = keys(stack, "landing/raw/")
    assert {key.split("/")[2] for key in landed} == {f"dt={day}" for day in graph["days"]}


def test_io_manager_writes_every_asset_to_the_bucket(stack, graph):
    # assets/<city>/<asset>/<day>.<ext> for daily assets, assets/<city>/<asset>.<ext> for the
    # others
    stored = {key.split("/")[2].split(".")[0] for key in keys(stack, f"assets/{CITY}/")}
    expected = {
        "raw_courier_pings",
        "clean_courier_pings",
        "quarantined_pings",
        "hex_hourly_busyness",
        "busyness_features",
        "restaurants",
        "restaurant_clusters",
        "training_set",
        "busyness_model",
        "model_evaluation",
        "champion_model",
        "busyness_forecast",
        "drift_report",
    }
    assert expected <= stored, f"missing in the bucket: {sorted(expected - stored)}"
    last_day = graph["days"][-1]
    assert any(last_day in key for key in keys(stack, f"assets/{CITY}/busyness_features/"))
    # the deployment record serves every city: no city prefix
    assert any(key.startswith("assets/endpoint_deployment") for key in keys(stack, "assets/"))


def test_drift_report_html_is_in_the_bucket(stack, graph):
    reports = keys(stack, f"reports/drift_reports/{CITY}/")
    assert f"reports/drift_reports/{CITY}/{graph['days'][-1]}.html" in reports


def test_mlflow_artifacts_are_in_the_bucket_through_the_server(stack, graph, tmp_path):
    tracking = graph["tracking"]
    champion = tracking.champion()
    run = tracking.client().get_run(champion.run_id)
    # The server proxies artifacts: clients only ever see mlflow-artifacts:/ URIs ...
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    # ... and the server keeps them in the bucket: the run's own artifacts (search log,
    # evaluation plots) and the logged model (MLflow 3 stores models apart from their run).
    artifacts = keys(stack, "mlflow/")
    assert any(champion.run_id in key for key in artifacts), artifacts[:20]
    assert any(key.endswith("/MLmodel") for key in artifacts), artifacts[:20]
    assert any(key.endswith(".ubj") for key in artifacts), artifacts[:20]
    # downloaded back through the server, and nothing of the download is left in the temp dir
    # (a daemon loads the champion for every forecast, deployment and drift report)
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(system_temp))
        model, loaded = tracking.load_champion()
        pinned = tracking.load_version(loaded.version)
    assert loaded.version == "1"
    assert model.get_booster().num_boosted_rounds() > 0
    assert model.get_booster().save_raw() == pinned.get_booster().save_raw()
    assert list(system_temp.iterdir()) == []


def test_a_password_in_the_tracking_uri_reaches_no_metadata_log_or_file(graph):
    secrets = graph["secrets"]
    for asset, metadata in secrets["metadata"].items():
        assert metadata["mlflow_tracking_uri"].startswith(f"http://alice:{MASK}@"), asset
        # the run link goes to the MLflow UI (GEO_BUSYNESS_MLFLOW_UI_URL): no credentials at all
        assert "alice" not in metadata["mlflow_run"], asset
        assert all(PASSWORD not in value for value in metadata.values()), asset
    assert secrets["events"] == []
    assert secrets["files"] == []
    assert not secrets["printed"]
