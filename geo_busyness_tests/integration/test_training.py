"""The training group on real storage and a real MLflow SQLite store: a good candidate becomes
the champion, a broken one is refused by the blocking checks and the alias stays, the
registry round-trips, promotion is idempotent and reversible."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import requests

from geo_busyness.assets.metadata import stage_selection
from geo_busyness.core.catalog import load_configured_catalog
from geo_busyness.core.forecast import FORECAST_COLUMN, next_day
from geo_busyness.core.lifecycle import MODEL, SEASONAL_NAIVE, SPLIT_COLUMN
from geo_busyness.core.model import predict_orders
from geo_busyness.definitions import defs
from geo_busyness.resources.environment import local_resources
from geo_busyness.resources.tracking import CHAMPION_ALIAS
from geo_busyness.simulate import SimulationConfig, simulated_city
from geo_busyness.stack.services import free_port

# A module fixture materializes weeks of history: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CITY = "regina"
REGINA = load_configured_catalog().get(CITY)
TRAINING = stage_selection("training", REGINA)
# Small and single-purpose: XGBoost's defaults under both objectives plus one Optuna trial,
# no PoC grid (its cost is measured in BENCHMARKS.md, not here).
RUN_CONFIG = {
    "ops": {
        "regina__busyness_model": {
            "config": {"n_trials": 3, "time_budget_s": 120, "train_poc_baseline": False}
        },
        "regina__training_set": {"config": {"window_days": 28}},
    }
}
# A candidate that is broken anyway needs no search.
ONE_FIT = {
    "ops": {
        "regina__busyness_model": {
            "config": {
                "objectives": ["count:poisson"],
                "n_trials": 1,
                "time_budget_s": 60,
                "train_poc_baseline": False,
            }
        }
    }
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """21 days of simulated hex_hourly_busyness (and busyness_features of the last 20) and the
    restaurant clusters on disk, resources for every asset, an empty MLflow store and a test
    Dagster instance."""
    root = tmp_path_factory.mktemp("training")
    simulated = simulated_city(SimulationConfig(days=21, pings_per_day=6_000, dirty_files=False))
    for asset, partitions in (
        ("busyness_features", simulated.features),
        ("hex_hourly_busyness", simulated.hourly),
    ):
        folder = root / "assets" / CITY / asset
        folder.mkdir(parents=True)
        for day, frame in partitions.items():
            frame.to_parquet(folder / f"{day}.parquet", index=False)
    simulated.restaurant_clusters.to_parquet(root / "assets" / CITY / "restaurant_clusters.parquet")
    resources = local_resources(root, endpoint_port=free_port())
    with dg.DagsterInstance.ephemeral() as instance:
        try:
            yield root, resources, instance
        finally:
            resources["endpoint"].stop()


def run(platform, selection, raise_on_error=True, run_config=None) -> dg.ExecuteInProcessResult:
    _, resources, instance = platform
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        instance=instance,
        resources=resources,
        run_config=run_config or {},
        raise_on_error=raise_on_error,
    )


def key(name: str) -> dg.AssetKey:
    return dg.AssetKey([CITY, name])


def load(platform, asset: str):
    """An asset of the city (``endpoint_deployment``, of every city, has no prefix)."""
    root, _, _ = platform
    folder = root / "assets" if asset == "endpoint_deployment" else root / "assets" / CITY
    path = folder / f"{asset}.pickle"
    return pd.read_pickle(path) if path.exists() else pd.read_parquet(folder / f"{asset}.parquet")


def tracking_of(resources):
    """The city's experiment and registered model in the platform's MLflow store."""
    return resources["mlflow_tracking"].for_city(CITY)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def first_run(platform):
    return run(platform, TRAINING, run_config=RUN_CONFIG)


def test_a_good_candidate_passes_every_gate_and_becomes_champion(platform, first_run):
    assert first_run.success
    assert check_results(first_run) == {
        "candidate_beats_every_baseline": True,
        "candidate_not_worse_than_champion": True,
        "candidate_predictions_are_sane": True,
    }
    evaluation = load(platform, "model_evaluation")
    assert evaluation.mae(MODEL) <= 0.9 * evaluation.mae(SEASONAL_NAIVE)
    champion = load(platform, "champion_model")
    candidate = load(platform, "busyness_model")
    assert (champion.version, champion.previous_version) == ("1", None)
    assert champion.run_id == candidate.mlflow_run_id == evaluation.candidate_run_id


def test_the_champion_has_a_model_card(platform, first_run):
    """One page per champion: data, every baseline, the gates, what drives the busiest
    hexagons, lineage; linked from champion_model (a location to copy: no report server)."""
    metadata = first_run.asset_materializations_for_node("regina__champion_model")[0].metadata
    location = metadata["model_card"].value
    assert location.startswith("file://") and location.endswith(
        "/model_cards/regina/version-1.html"
    )
    page = Path(location.removeprefix("file://")).read_text()
    evaluation = load(platform, "model_evaluation")
    for text in ("version 1", *evaluation.metrics.index, "beats_every_baseline", "11+"):
        assert text in page
    assert evaluation.train_rows > 0 and evaluation.train_range.start < evaluation.test_range.start
    assert (
        len(evaluation.busiest) == 5 and evaluation.busiest["test_orders"].is_monotonic_decreasing
    )
    assert all(cell in page for cell in evaluation.busiest.index)
    assert evaluation.candidate_run_id in page
    assert "gates passed" in metadata["summary"].value


def test_training_set_split_is_by_time_with_gaps(platform, first_run):
    frame = load(platform, "training_set")
    hours = {
        name: frame.loc[frame[SPLIT_COLUMN] == name, "hour_start"]
        for name in ("train", "validation", "test")
    }
    gap = pd.Timedelta(hours=24)
    assert hours["train"].max() + gap < hours["validation"].min()
    assert hours["validation"].max() + gap < hours["test"].min()


def test_mlflow_run_has_params_metrics_importances_and_the_model(platform, first_run):
    _, resources, _ = platform
    candidate = load(platform, "busyness_model")
    tracking = tracking_of(resources)
    client = tracking.client()
    run = client.get_run(candidate.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == tracking.experiment_id()
    assert client.get_experiment(run.info.experiment_id).name == "geo_busyness-regina"
    assert run.data.params["chosen_objective"] in ("count:poisson", "reg:tweedie")
    for metric in ("validation_model_mae", "validation_seasonal_naive_mae", "test_model_mae"):
        assert np.isfinite(run.data.metrics[metric])
    artifacts = {item.path for item in client.list_artifacts(candidate.mlflow_run_id)}
    assert {"feature_importance_gain.json", "search_log.json", "evaluation"} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(candidate.mlflow_run_id, "evaluation")}
    assert "evaluation/predicted_vs_actual.png" in evaluation


def test_registry_round_trip_predicts_like_the_in_memory_model(platform, first_run):
    import mlflow.xgboost

    _, resources, _ = platform
    tracking = tracking_of(resources)
    assert tracking.registered_model_name == "geo_busyness_hex_busyness-regina"
    candidate = load(platform, "busyness_model")
    test = load(platform, "training_set").query(f"{SPLIT_COLUMN} == 'test'")
    mlflow.set_tracking_uri(tracking.uri)
    mlflow.set_registry_uri(tracking.uri)
    served = mlflow.xgboost.load_model(f"models:/{tracking.registered_model_name}@{CHAMPION_ALIAS}")
    names = candidate.feature_names
    np.testing.assert_array_equal(
        predict_orders(served, test, names), predict_orders(candidate.trained.model, test, names)
    )


def test_forecast_of_the_next_day_comes_from_the_champion(platform, first_run):
    root, resources, _ = platform
    last_day = max(path.stem for path in (root / "assets" / CITY / "hex_hourly_busyness").iterdir())
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(key("busyness_forecast")),
        partition_key=last_day,
        instance=platform[2],
        resources=resources,
    )
    metadata = result.asset_materializations_for_node("regina__busyness_forecast")[0].metadata
    assert metadata["forecast_day"].value == next_day(last_day)
    forecast = pd.read_parquet(root / "assets" / CITY / "busyness_forecast" / f"{last_day}.parquet")
    assert (forecast["hour_start"].dt.strftime("%Y-%m-%d") == next_day(last_day)).all()
    assert len(forecast) == forecast["h3_cell"].nunique() * 24
    assert (forecast["model_version"] == "1").all()
    candidate = load(platform, "busyness_model")  # version 1 is this candidate
    names = candidate.feature_names
    np.testing.assert_allclose(
        forecast[FORECAST_COLUMN],
        predict_orders(candidate.trained.model, forecast, names),
        rtol=1e-6,
    )
    assert (forecast[FORECAST_COLUMN] >= 0).all()


def test_the_champion_is_deployed_and_serves_the_forecast(platform, first_run):
    root, _, _ = platform
    result = run(platform, dg.AssetSelection.assets("endpoint_deployment"))
    assert check_results(result) == {"endpoint_answers_known_request_regina": True}
    record = load(platform, "endpoint_deployment")
    assert (record.target, record.model_version) == ("local", "1")
    last_day = max(path.stem for path in (root / "assets" / CITY / "busyness_forecast").iterdir())
    forecast = pd.read_parquet(root / "assets" / CITY / "busyness_forecast" / f"{last_day}.parquet")
    rows = forecast.sample(50, random_state=0)
    body = {
        "instances": [
            {"h3_cell": cell, "timestamp": hour.isoformat()}
            for cell, hour in zip(rows["h3_cell"], rows["hour_start"], strict=True)
        ]
    }
    answer = requests.post(f"{record.address}/invocations", json=body, timeout=10).json()
    assert answer["model_version"] == "1"
    np.testing.assert_allclose(
        [p["busyness"] for p in answer["predictions"]], rows[FORECAST_COLUMN], rtol=1e-5, atol=1e-4
    )


def test_promoting_the_champion_again_changes_nothing(platform, first_run):
    result = run(platform, dg.AssetSelection.assets(key("champion_model")))
    metadata = result.asset_materializations_for_node("regina__champion_model")[0].metadata
    assert metadata["changed"].value is False
    assert metadata["version"].value == "1"


def test_a_broken_candidate_is_refused_and_the_champion_stays(platform, first_run):
    root, resources, _ = platform
    tracking = tracking_of(resources)
    # A corrupted upstream: targets shuffled among the train and validation rows.
    path = root / "assets" / CITY / "training_set.parquet"
    frame = pd.read_parquet(path)
    fitted = frame[SPLIT_COLUMN] != "test"
    frame.loc[fitted, "orders"] = np.random.default_rng(0).permutation(
        frame.loc[fitted, "orders"].to_numpy()
    )
    frame.to_parquet(path, index=False)
    retrain = dg.AssetSelection.assets(
        key("busyness_model"), key("model_evaluation"), key("champion_model")
    )

    result = run(platform, retrain, raise_on_error=False, run_config=ONE_FIT)
    assert check_results(result) == {
        "candidate_beats_every_baseline": False,
        "candidate_not_worse_than_champion": False,
        "candidate_predictions_are_sane": True,
    }
    # What materialize(raise_on_error=True) raises: the blocking checks' failures.
    failed = {e.step_failure_data.error.cls_name for e in result.all_events if e.is_step_failure}
    assert failed == {"DagsterAssetCheckFailedError"}
    assert key("champion_model") not in {
        e.asset_key for e in result.get_asset_materialization_events()
    }
    # Materialized on its own, champion_model re-applies the gates and refuses too.
    alone = run(platform, dg.AssetSelection.assets(key("champion_model")), raise_on_error=False)
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "candidate refused, champion unchanged (version 1)" in str(
        failure.step_failure_data.error
    )
    assert tracking.champion().version == "1"

    # The rollback path: force the broken model in, then roll back to version 1.
    broken = load(platform, "busyness_model")
    forced, changed = tracking.promote(broken.model_uri, broken.mlflow_run_id)
    assert changed and forced.previous_version == "1"
    assert tracking.rollback().version == "1"
