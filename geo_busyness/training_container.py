"""``train``: the training half of the image's SageMaker contract (``docker run IMAGE train``).

SageMaker mounts a job's files under ``/opt/ml`` and starts the container with ``train``. In:
the ``training`` channel, the ``training_set`` asset's rows as Parquet (features, target and
the ``split`` column), in ``/opt/ml/input/data/training``; the hyperparameters, a JSON object
of strings, in ``/opt/ml/input/config/hyperparameters.json``. Out: ``model.ubj`` (XGBoost's
native format) and ``training.json`` (how the model was found) in ``/opt/ml/model``, which
SageMaker uploads as ``model.tar.gz``; on error, the reason in ``/opt/ml/output/failure``
(SageMaker shows it as the job's FailureReason) and exit code 1.

The training toolkit's variables move those paths (``SM_CHANNEL_TRAINING``,
``SM_INPUT_CONFIG_DIR``, ``SM_MODEL_DIR``, ``SM_OUTPUT_DIR``). SageMaker does not set them for
a bring-your-own image, so the defaults are what runs in production; tests and local runs set
them.

Training is :func:`~geo_busyness.core.model.train_busyness_model` on
:func:`~geo_busyness.core.lifecycle.split_from_training_set`, as in the in-process backend, so
the same rows, hyperparameters and seed give the same model (while the time budget does not
bind). This module owns the format both ways: the SageMaker backend writes the hyperparameters
with :func:`to_hyperparameters` and reads the model with :func:`read_model`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from geo_busyness.core.features import TARGET_COLUMN
from geo_busyness.core.lifecycle import SPLIT_COLUMN, split_from_training_set
from geo_busyness.core.model import TrainedModel, TrainingConfig, train_busyness_model

CHANNEL_ENV, DEFAULT_CHANNEL = "SM_CHANNEL_TRAINING", "/opt/ml/input/data/training"
INPUT_CONFIG_ENV, DEFAULT_INPUT_CONFIG = "SM_INPUT_CONFIG_DIR", "/opt/ml/input/config"
MODEL_DIR_ENV, DEFAULT_MODEL_DIR = "SM_MODEL_DIR", "/opt/ml/model"
OUTPUT_DIR_ENV, DEFAULT_OUTPUT_DIR = "SM_OUTPUT_DIR", "/opt/ml/output"
HYPERPARAMETERS_FILE = "hyperparameters.json"
MODEL_FILE = "model.ubj"
SUMMARY_FILE = "training.json"
FAILURE_FILE = "failure"
FEATURES_KEY = "feature_names"


class ContainerError(Exception):
    """Bad job input; the message is the FailureReason as it stands."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# Every TrainingConfig field as a hyperparameter: what the string must be, and its parser.
HYPERPARAMETERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "objectives": ("comma-separated XGBoost objectives", _names),
    "n_trials": ("an integer", int),
    "time_budget_s": ("a finite number", _finite),
    "max_rounds": ("an integer", int),
    "early_stopping_rounds": ("an integer", int),
    "search_rows": ("an integer", int),
    "seed": ("an integer", int),
    "n_jobs": ("an integer", int),
}


def to_hyperparameters(feature_names: list[str], config: TrainingConfig) -> dict[str, str]:
    """The job's HyperParameters (all strings). ``n_jobs`` is left out: it is the caller's
    CPU count, while the container should use every CPU of the instance it runs on."""
    values = {
        field.name: getattr(config, field.name)
        for field in fields(config)
        if field.name != "n_jobs"
    }
    return {
        FEATURES_KEY: ",".join(feature_names),
        **{
            key: ",".join(value) if isinstance(value, tuple) else str(value)
            for key, value in values.items()
        },
    }


def parse_hyperparameters(values: Mapping[str, Any]) -> tuple[list[str], TrainingConfig]:
    """Feature names and :class:`TrainingConfig` from SageMaker's string hyperparameters;
    unknown keys are refused so that a misspelt setting never silently trains on a default."""
    unknown = sorted(set(values) - set(HYPERPARAMETERS) - {FEATURES_KEY})
    if unknown:
        raise ContainerError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join([FEATURES_KEY, *HYPERPARAMETERS])}"
        )
    if FEATURES_KEY not in values:
        raise ContainerError(
            f"hyperparameter {FEATURES_KEY!r} is required: the model's feature columns, "
            "comma-separated, in order"
        )
    names = list(_names(str(values[FEATURES_KEY])))
    if not names or len(set(names)) != len(names):
        raise ContainerError(
            f"hyperparameter {FEATURES_KEY!r} must name distinct columns, got "
            f"{values[FEATURES_KEY]!r}"
        )
    parsed = {}
    for key, (kind, parse) in HYPERPARAMETERS.items():
        if key in values:
            try:
                parsed[key] = parse(str(values[key]))
            except ValueError:
                raise ContainerError(
                    f"hyperparameter {key}={values[key]!r} is not {kind}"
                ) from None
    try:
        return names, TrainingConfig(**parsed)
    except ValueError as error:
        raise ContainerError(f"bad hyperparameters: {error}") from None


@dataclass(frozen=True)
class ContainerPaths:
    channel: Path
    input_config: Path
    model_dir: Path
    output_dir: Path

    @classmethod
    def from_environment(cls) -> ContainerPaths:
        return cls(
            channel=Path(os.environ.get(CHANNEL_ENV, DEFAULT_CHANNEL)),
            input_config=Path(os.environ.get(INPUT_CONFIG_ENV, DEFAULT_INPUT_CONFIG)),
            model_dir=Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR)),
            output_dir=Path(os.environ.get(OUTPUT_DIR_ENV, DEFAULT_OUTPUT_DIR)),
        )


def read_hyperparameters(input_config: Path) -> dict[str, Any]:
    """The job's hyperparameters; none (every default) when SageMaker wrote no file."""
    path = input_config / HYPERPARAMETERS_FILE
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text())
    except ValueError as error:
        raise ContainerError(f"{path} is not JSON: {error}") from None
    if not isinstance(values, dict):
        raise ContainerError(f"{path} must hold a JSON object, got {type(values).__name__}")
    return values


def read_training_set(channel: Path, feature_names: list[str]) -> pd.DataFrame:
    """Every ``*.parquet`` file of the channel (sorted by path), checked for needed columns."""
    if not channel.is_dir():
        raise ContainerError(
            f"training channel {channel} does not exist: the job needs an input channel named "
            f"'training' ({CHANNEL_ENV} overrides the path)"
        )
    files = sorted(path for path in channel.rglob("*.parquet") if path.is_file())
    if not files:
        raise ContainerError(f"training channel {channel} holds no .parquet file")
    frames = [pd.read_parquet(path) for path in files]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    missing = [
        name
        for name in [SPLIT_COLUMN, TARGET_COLUMN, "hour_start", *feature_names]
        if name not in frame.columns
    ]
    if missing:
        raise ContainerError(f"the training set in {channel} lacks columns {missing}")
    return frame


def write_model(trained: TrainedModel, model_dir: Path) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    trained.model.save_model(model_dir / MODEL_FILE)
    summary = {
        "objective": trained.objective,
        "params": trained.params,
        "best_iteration": trained.best_iteration,
        "validation_mae": trained.validation_mae,
        "search_log": trained.search_log,
        "seconds": trained.seconds,
        "feature_names": trained.feature_names,
    }
    (model_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))


def read_model(model_dir: Path) -> TrainedModel:
    """The :class:`TrainedModel` :func:`write_model` left in ``model_dir``."""
    missing = [name for name in (MODEL_FILE, SUMMARY_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"{model_dir} lacks {', '.join(missing)}: not the output of the `train` entry point"
        )
    import xgboost as xgb  # here: the Dagster code location imports this module, and rarely trains

    summary = json.loads((model_dir / SUMMARY_FILE).read_text())
    model = xgb.XGBRegressor()
    model.load_model(model_dir / MODEL_FILE)
    return TrainedModel(
        model=model,
        objective=summary["objective"],
        params=summary["params"],
        best_iteration=int(summary["best_iteration"]),
        validation_mae=float(summary["validation_mae"]),
        search_log=summary["search_log"],
        seconds=float(summary["seconds"]),
        feature_names=list(summary["feature_names"]),
    )


def run(paths: ContainerPaths) -> TrainedModel:
    """Read the job's input, train, write the model directory."""
    names, config = parse_hyperparameters(read_hyperparameters(paths.input_config))
    frame = read_training_set(paths.channel, names)
    try:
        split = split_from_training_set(frame)
    except ValueError as error:
        raise ContainerError(f"bad training set in {paths.channel}: {error}") from None
    del frame  # the split holds copies of its rows: free the frame before training
    print(
        f"training on {len(split.train)} train / {len(split.validation)} validation rows, "
        f"{len(names)} features, {config}",
        flush=True,
    )
    trained = train_busyness_model(split, names, config)
    write_model(trained, paths.model_dir)
    print(
        f"kept {trained.objective} (best iteration {trained.best_iteration}, validation MAE "
        f"{trained.validation_mae:.4f}) after {len(trained.search_log)} fits in "
        f"{trained.seconds:.1f}s; wrote {paths.model_dir}",
        flush=True,
    )
    return trained


def main() -> int:
    paths = ContainerPaths.from_environment()
    started = time.perf_counter()
    try:
        run(paths)
    except Exception as error:
        if isinstance(error, ContainerError):
            reason = str(error)
        else:
            traceback.print_exc()
            reason = f"training failed: {type(error).__name__}: {error}"
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        (paths.output_dir / FAILURE_FILE).write_text(reason)
        print(f"train: {reason}", file=sys.stderr, flush=True)
        return 1
    print(f"train: done in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
