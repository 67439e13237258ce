"""The image's ``train`` entry point (SageMaker's training-container contract), run as the real
console script on a simulated training set: it writes a model that predicts exactly like the
in-process training of the same rows and seed, and a bad job input ends with exit code 1 and
a ``failure`` file that says what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.features import feature_columns
from geo_busyness.core.lifecycle import (
    SPLIT_COLUMN,
    split_from_training_set,
    training_set_from_features,
)
from geo_busyness.core.model import SplitConfig, TrainingConfig, predict, train_busyness_model
from geo_busyness.simulate import SimulationConfig, simulated_city
from geo_busyness.training_container import (
    FAILURE_FILE,
    HYPERPARAMETERS,
    MODEL_FILE,
    SUMMARY_FILE,
    ContainerError,
    ContainerPaths,
    parse_hyperparameters,
    read_model,
    run,
    to_hyperparameters,
)

pytestmark = pytest.mark.unit

TRAIN = Path(sys.executable).parent / "train"
FEATURES = feature_columns(DEFAULT_CITY.n_restaurant_clusters)
# XGBoost's defaults under both objectives plus one sampled trial, on a budget that never
# binds; single-threaded so both sides fit the same way on any machine.
CONFIG = TrainingConfig(n_trials=3, time_budget_s=600, seed=7, n_jobs=1)


@pytest.fixture(scope="module")
def training_set() -> pd.DataFrame:
    """The ``training_set`` asset's frame (features, target, ``split``) of a small city."""
    simulated = simulated_city(SimulationConfig(days=14, pings_per_day=4_000, dirty_files=False))
    frame, _ = training_set_from_features(
        {day: (lambda f=f: f) for day, f in simulated.features.items()}, 28, SplitConfig()
    )
    return frame


def job_paths(root: Path) -> ContainerPaths:
    """``/opt/ml`` under ``root``."""
    return ContainerPaths(
        channel=root / "input" / "data" / "training",
        input_config=root / "input" / "config",
        model_dir=root / "model",
        output_dir=root / "output",
    )


def prepare(root: Path, frame: pd.DataFrame | None, hyperparameters: dict) -> ContainerPaths:
    paths = job_paths(root)
    paths.input_config.mkdir(parents=True)
    (paths.input_config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    if frame is not None:
        paths.channel.mkdir(parents=True)
        frame.to_parquet(paths.channel / "training.parquet", index=False)
    return paths


def run_train(paths: ContainerPaths) -> subprocess.CompletedProcess:
    """The console script, as SageMaker runs it (``train``), with the toolkit's path variables."""
    env = {
        **os.environ,
        "SM_CHANNEL_TRAINING": str(paths.channel),
        "SM_INPUT_CONFIG_DIR": str(paths.input_config),
        "SM_MODEL_DIR": str(paths.model_dir),
        "SM_OUTPUT_DIR": str(paths.output_dir),
    }
    return subprocess.run(
        [str(TRAIN)], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def failure(paths: ContainerPaths, process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 1, process.stdout + process.stderr
    assert not (paths.model_dir / MODEL_FILE).exists()
    return (paths.output_dir / FAILURE_FILE).read_text()


def without_seconds(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in log]


def test_the_container_trains_the_model_in_process_training_does(training_set, tmp_path):
    hyperparameters = {**to_hyperparameters(FEATURES, CONFIG), "n_jobs": "1"}
    paths = prepare(tmp_path, training_set, hyperparameters)

    process = run_train(paths)

    assert process.returncode == 0, process.stdout + process.stderr
    assert not (paths.output_dir / FAILURE_FILE).exists()
    assert sorted(p.name for p in paths.model_dir.iterdir()) == [MODEL_FILE, SUMMARY_FILE]
    summary = json.loads((paths.model_dir / SUMMARY_FILE).read_text())
    assert set(summary) == {
        "objective",
        "params",
        "best_iteration",
        "validation_mae",
        "search_log",
        "seconds",
        "feature_names",
    }
    from_container = read_model(paths.model_dir)
    split = split_from_training_set(training_set)
    in_process = train_busyness_model(split, FEATURES, CONFIG)
    assert from_container.feature_names == FEATURES
    assert from_container.objective == in_process.objective
    assert from_container.params == in_process.params
    assert from_container.best_iteration == in_process.best_iteration
    assert from_container.validation_mae == in_process.validation_mae
    assert without_seconds(from_container.search_log) == without_seconds(in_process.search_log)
    assert len(from_container.search_log) == CONFIG.n_trials
    for rows in (split.validation, split.test):
        expected = predict(in_process, rows, FEATURES)
        assert np.array_equal(predict(from_container, rows, FEATURES), expected)


def test_an_unknown_hyperparameter_fails_the_job_naming_it(training_set, tmp_path):
    hyperparameters = {**to_hyperparameters(FEATURES, CONFIG), "n_estimators": "500"}
    paths = prepare(tmp_path, training_set.head(50), hyperparameters)

    reason = failure(paths, run_train(paths))

    assert "unknown hyperparameter(s) 'n_estimators'" in reason
    assert "n_trials" in reason  # the known keys are listed


def test_a_missing_channel_fails_the_job_clearly(tmp_path):
    paths = prepare(tmp_path, None, to_hyperparameters(FEATURES, CONFIG))

    reason = failure(paths, run_train(paths))

    assert reason.startswith(f"training channel {paths.channel} does not exist")
    assert "'training'" in reason


# ---------------------------------------------------------------------------------------------
# In-process (a subprocess costs seconds of imports): the checks behind the failures above


def test_every_training_config_field_is_a_hyperparameter():
    assert set(HYPERPARAMETERS) == {field.name for field in fields(TrainingConfig)}


def test_hyperparameters_are_strings_and_round_trip():
    config = TrainingConfig(
        objectives=("reg:tweedie",), n_trials=5, time_budget_s=12.5, search_rows=999, seed=3
    )
    written = to_hyperparameters(FEATURES, config)

    assert all(isinstance(value, str) for value in written.values())
    assert "n_jobs" not in written  # the instance's CPUs, not the caller's
    names, parsed = parse_hyperparameters(written)
    assert names == FEATURES
    assert parsed == config  # n_jobs: the CPUs here on both sides
    assert parse_hyperparameters({"feature_names": "a", "n_jobs": "2"})[1].n_jobs == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n_trials": "many"}, "hyperparameter n_trials='many' is not an integer"),
        ({"time_budget_s": "nan"}, "hyperparameter time_budget_s='nan' is not a finite number"),
        ({"n_trials": "1"}, "bad hyperparameters: n_trials=1 cannot try XGBoost's defaults"),
        ({"objectives": ","}, "bad hyperparameters: objectives must name distinct"),
        ({"feature_names": "a,a"}, "hyperparameter 'feature_names' must name distinct columns"),
        ({"feature_names": None, "seed": "1"}, "hyperparameter 'feature_names' is required"),
    ],
)
def test_bad_hyperparameter_values_are_refused_with_the_key(values, message):
    written = {**to_hyperparameters(FEATURES, TrainingConfig()), **values}
    written = {key: value for key, value in written.items() if value is not None}
    with pytest.raises(ContainerError) as raised:
        parse_hyperparameters(written)
    assert str(raised.value).startswith(message)


def test_a_channel_without_parquet_files_is_refused(tmp_path):
    paths = prepare(tmp_path, None, to_hyperparameters(FEATURES, CONFIG))
    paths.channel.mkdir(parents=True)
    (paths.channel / "notes.txt").write_text("not the training set")

    with pytest.raises(ContainerError) as raised:
        run(paths)
    assert str(raised.value) == f"training channel {paths.channel} holds no .parquet file"


def test_a_training_set_without_the_split_column_is_refused(training_set, tmp_path):
    frame = training_set.drop(columns=SPLIT_COLUMN).head(50)
    paths = prepare(tmp_path, frame, to_hyperparameters(FEATURES, CONFIG))

    with pytest.raises(ContainerError, match=r"lacks columns \['split'\]"):
        run(paths)
