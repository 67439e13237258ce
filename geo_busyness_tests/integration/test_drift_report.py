"""drift_report through Dagster on local storage: the per-column table as Parquet, the Evidently
HTML in the report store and linked from the metadata, the forecast error once a forecast and
the actuals exist (training MAE from the MLflow run of the forecast's model version), the
warning check, and the report store on a real S3 server."""

from __future__ import annotations

import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from geo_busyness.assets.monitoring import CHECK_NAME, TEST_MAE_METRIC
from geo_busyness.core.catalog import load_configured_catalog
from geo_busyness.core.drift import DRIFT_TABLE_COLUMNS
from geo_busyness.core.forecast import FORECAST_COLUMN
from geo_busyness.core.lifecycle import training_set_from_features
from geo_busyness.core.model import SplitConfig
from geo_busyness.definitions import defs
from geo_busyness.partitions import city_partitions
from geo_busyness.resources.environment import local_resources
from geo_busyness.resources.reports import DriftPolicy, ReportStore
from geo_busyness.simulate import SimulationConfig, simulated_city
from geo_busyness_tests.integration.conftest import S3Bucket

pytestmark = pytest.mark.integration

START = datetime.date(2026, 10, 1)
TRAIN_DAYS = 10  # features of days 2..10 make the training set; later days are "new"
DAYS = 13
CITY = "regina"
REGINA = load_configured_catalog().get(CITY)
DRIFT_REPORT = dg.AssetKey([CITY, "drift_report"])
ASSETS = [*defs.assets, *defs.asset_checks]
SELECTION = dg.AssetSelection.assets(DRIFT_REPORT)
FORECAST_ERROR = 2.0
TRAINING_MAE = 1.6


def day(k: int) -> str:
    return (START + datetime.timedelta(days=k - 1)).isoformat()


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """busyness_features and hex_hourly_busyness of 13 simulated days, a training set of the
    first 10, resources with everything under one temporary root, a test instance."""
    root = tmp_path_factory.mktemp("drift")
    simulated = simulated_city(
        SimulationConfig(start_date=START, days=DAYS, pings_per_day=6_000, dirty_files=False)
    )
    for asset, partitions in (
        ("busyness_features", simulated.features),
        ("hex_hourly_busyness", simulated.hourly),
    ):
        folder = root / "assets" / CITY / asset
        folder.mkdir(parents=True)
        for key, frame in partitions.items():
            frame.to_parquet(folder / f"{key}.parquet", index=False)
    trained_on = {
        key: (lambda frame=frame: frame)
        for key, frame in simulated.features.items()
        if key <= day(TRAIN_DAYS)
    }
    training_set, _ = training_set_from_features(trained_on, 28, SplitConfig())
    training_set.to_parquet(root / "assets" / CITY / "training_set.parquet", index=False)
    resources = {
        **local_resources(root),
        "report_store": ReportStore(base_path=str(root / "reports")),
        "drift_policy": DriftPolicy(),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        yield root, resources, instance, simulated


def materialize(platform, partition: str, **resources) -> dg.ExecuteInProcessResult:
    _, base, instance, _ = platform
    return dg.materialize(
        ASSETS,
        selection=SELECTION,
        partition_key=partition,
        instance=instance,
        resources={**base, **resources},
    )


def metadata_of(result: dg.ExecuteInProcessResult) -> dict:
    return result.asset_materializations_for_node(f"{CITY}__drift_report")[0].metadata


def check_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == CHECK_NAME
    assert evaluation.asset_key == DRIFT_REPORT
    return evaluation


def test_report_without_forecast_writes_table_html_and_links_it(platform):
    root, _, _, _ = platform
    result = materialize(platform, day(DAYS))
    assert result.success
    table = pd.read_parquet(root / "assets" / CITY / "drift_report" / f"{day(DAYS)}.parquet")
    assert list(table.columns) == list(DRIFT_TABLE_COLUMNS)
    assert not table["column"].isin(["hour_of_day", "day_of_week", "is_weekend"]).any()
    metadata = metadata_of(result)
    html = root / "reports" / "drift_reports" / CITY / f"{day(DAYS)}.html"
    assert html.is_file() and "<html" in html.read_text()[:2000].lower()
    assert metadata["report"].value == html.resolve().as_uri()
    assert metadata["n_tested"].value == len(table)
    assert metadata["n_drifted"].value == int(table["drifted"].sum())
    assert metadata["drift_share"].value == pytest.approx(table["drifted"].mean())
    assert metadata["drifted_columns"].value == table.loc[table["drifted"], "column"].tolist()
    assert metadata["day_in_reference"].value is False
    assert ("drifted_distributions" in metadata) == (metadata["n_drifted"].value > 0)
    assert "busyness_forecast of" in metadata["forecast_error"].value
    assert "error_ratio" not in metadata
    evaluation = check_of(result)
    assert evaluation.passed  # a baseline day: no drift, no error growth
    assert evaluation.severity == dg.AssetCheckSeverity.WARN


def test_report_of_a_training_day_says_so(platform):
    result = materialize(platform, day(3))  # train rows: days 2-4 (then validation, test)
    assert metadata_of(result)["day_in_reference"].value is True


def test_first_partition_has_no_previous_forecast_and_still_works(platform):
    """The forecast mapping yields no partition at all for the first day of the partitions."""
    root, _, _, _ = platform
    first = city_partitions(REGINA).get_first_partition_key()
    source = root / "assets" / CITY / "busyness_features" / f"{day(DAYS)}.parquet"
    target = source.with_name(f"{first}.parquet")
    target.write_bytes(source.read_bytes())
    try:
        result = materialize(platform, first)
    finally:
        target.unlink()
    assert result.success
    assert "not available" in metadata_of(result)["forecast_error"].value


def _register_version(resources: dict, test_mae: float) -> str:
    """A registered model version of the city whose run holds the test MAE model_evaluation
    would log."""
    tracking = resources["mlflow_tracking"].for_city(CITY)
    client = tracking.client()
    run = client.create_run(tracking.experiment_id())
    client.log_metric(run.info.run_id, TEST_MAE_METRIC, test_mae)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(tracking.registered_model_name)
    version = client.create_model_version(
        tracking.registered_model_name, f"runs:/{run.info.run_id}/model", run.info.run_id
    )
    return str(version.version)


@pytest.fixture(scope="module")
def forecast_of_last_day(platform) -> Path:
    """busyness_forecast made the day before the last day, off by FORECAST_ERROR orders on
    every hexagon-hour (the features' orders are the actual orders, 0 where none)."""
    root, resources, _, simulated = platform
    version = _register_version(resources, TRAINING_MAE)
    features = simulated.features[day(DAYS)]
    forecast = features.assign(
        **{FORECAST_COLUMN: features["orders"] + FORECAST_ERROR, "model_version": version}
    )
    folder = root / "assets" / CITY / "busyness_forecast"
    folder.mkdir(exist_ok=True)
    path = folder / f"{day(DAYS - 1)}.parquet"
    forecast.to_parquet(path, index=False)
    return path


def test_forecast_error_against_the_test_mae_of_the_forecasting_version(
    platform, forecast_of_last_day
):
    result = materialize(platform, day(DAYS))
    metadata = metadata_of(result)
    assert metadata["forecast_mae"].value == pytest.approx(FORECAST_ERROR)
    assert metadata["training_mae"].value == pytest.approx(TRAINING_MAE)
    assert metadata["error_ratio"].value == pytest.approx(FORECAST_ERROR / TRAINING_MAE)
    assert metadata["forecast_model_version"].value == "1"
    assert metadata["orders_outside_forecast"].value == 0
    assert "forecast_error" not in metadata
    assert check_of(result).passed  # 1.25x is under the default 1.5x


def test_check_warns_when_the_error_grew_past_the_policy(platform, forecast_of_last_day):
    strict = DriftPolicy(max_error_ratio=1.2)
    evaluation = check_of(materialize(platform, day(DAYS), drift_policy=strict))
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "forecast MAE is 1.25x" in evaluation.description
    assert evaluation.metadata["retraining_due"].value is True


def test_report_store_on_s3(s3_env: S3Bucket):
    store = ReportStore(base_path=s3_env.url("reports"), s3_endpoint_url=s3_env.endpoint_url)
    location = store.save("drift_reports/regina/2026-10-13.html", b"<html></html>", "text/html")
    assert location == f"s3://{s3_env.name}/reports/drift_reports/regina/2026-10-13.html"
    head = s3_env.client().head_object(
        Bucket=s3_env.name, Key="reports/drift_reports/regina/2026-10-13.html"
    )
    assert head["ContentType"] == "text/html"
    assert head["ContentLength"] == len(b"<html></html>")


def test_report_store_writes_locally_and_refuses_paths_outside(tmp_path):
    store = ReportStore(base_path=str(tmp_path / "reports"))
    location = store.save("a/b/report.html", b"first", "text/html")
    path = tmp_path / "reports" / "a" / "b" / "report.html"
    assert location == path.as_uri()
    store.save("a/b/report.html", b"second", "text/html")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary left
    for bad in ("../escape.html", "/etc/passwd", ""):
        with pytest.raises(ValueError, match="relative path inside the store"):
            store.save(bad, b"x", "text/html")
