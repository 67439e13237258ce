"""Model lifecycle around training: the training set, evaluation and the promotion gates.

Plain functions and dataclasses shared by the training assets, their asset checks and the
tests; no Dagster, no MLflow (the MLflow ids in :class:`CandidateModel` are plain strings).
The gates live here, not in the checks, so that ``champion_model`` re-applies exactly the
rules the blocking checks reported before it moves the registry alias.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from geo_busyness.core.features import TARGET_COLUMN

if TYPE_CHECKING:
    from sklearn.base import RegressorMixin
from geo_busyness.core.model import (
    HOUR,
    Split,
    SplitConfig,
    TimeRange,
    TrainedModel,
    error_by,
    mae_by_band,
    metrics_table,
    prediction_problems,
    same_hour_of_week_mean_predict,
    seasonal_naive_predict,
    time_split,
    yesterday_predict,
    zero_predict,
)

SPLIT_COLUMN = "split"
SPLITS = ("train", "validation", "test")
MODEL = "model"
ZERO = "zero"
SEASONAL_NAIVE = "seasonal_naive"
SAME_HOUR_4W_MEAN = "same_hour_4w_mean"
YESTERDAY = "yesterday"
POC_BASELINE = "poc_random_forest"
CHAMPION = "champion"
# What a candidate must beat, each scored on the same test rows (the PoC's model when trained).
BASELINES = (ZERO, SEASONAL_NAIVE, SAME_HOUR_4W_MEAN, YESTERDAY, POC_BASELINE)


# ---------------------------------------------------------------------------------------------
# Training set


def training_set_from_features(
    partitions: Mapping[str, Callable[[], pd.DataFrame]], window_days: int, split: SplitConfig
) -> tuple[pd.DataFrame, dict[str, TimeRange]]:
    """Feature rows of the last ``window_days`` calendar days, labelled train/validation/test.

    ``partitions`` maps each materialized day (``YYYY-MM-DD``) to a loader, so only the days
    in the window are read. The window ends at the latest materialized day; days missing
    inside it simply contribute no rows. Rows in the gaps between slices are dropped.
    """
    if window_days < 1:
        raise ValueError(f"window_days must be >= 1, got {window_days!r}")
    if not partitions:
        raise ValueError(
            "no busyness_features partitions are materialized: materialize some days of the "
            "features group before the training set"
        )
    last = pd.Timestamp(max(partitions))
    first = last - pd.Timedelta(days=window_days - 1)
    days = sorted(day for day in partitions if pd.Timestamp(day) >= first)
    frames = [partitions[day]() for day in days]
    # The first day ever has no history, hence no rows; concat warns on empty frames.
    features = pd.concat([f for f in frames if len(f)] or frames, ignore_index=True)
    parts = time_split(features, split)
    labelled = pd.concat(
        [getattr(parts, name).assign(**{SPLIT_COLUMN: name}) for name in SPLITS],
        ignore_index=True,
    )
    labelled[SPLIT_COLUMN] = pd.Categorical(labelled[SPLIT_COLUMN], categories=SPLITS)
    return labelled, parts.ranges


# Above this share of hexagon-hours without an order, a city is sparse for its resolution.
SPARSE_ZERO_SHARE = 0.8


def resolution_advice(rows: pd.DataFrame, resolution: int) -> str | None:
    """Why the city looks too sparse for its H3 resolution, with the counts; None when not.

    With most hexagon-hours at zero the model learns little beyond zero (which it must beat);
    one resolution coarser pools about 7 hexagons into one."""
    if rows.empty:
        return None
    zero_share = float((rows[TARGET_COLUMN] == 0).mean())
    if zero_share <= SPARSE_ZERO_SHARE or resolution == 0:
        return None
    return (
        f"{zero_share:.0%} of {len(rows):,} hexagon-hours have no order at H3 resolution "
        f"{resolution} (mean {rows[TARGET_COLUMN].mean():.2f} orders per hexagon-hour, "
        f"{rows['h3_cell'].nunique()} hexagons): too sparse to learn much beyond zero; "
        f"h3_resolution {resolution - 1} in the city catalog would pool about 7 hexagons into one"
    )


def split_from_training_set(training_set: pd.DataFrame) -> Split:
    """The :class:`Split` a training set was labelled with (ranges from the rows present)."""
    missing = [name for name in SPLITS if not (training_set[SPLIT_COLUMN] == name).any()]
    if missing:
        raise ValueError(f"the training set has no {', '.join(missing)} rows")
    parts = {
        name: training_set.loc[training_set[SPLIT_COLUMN] == name]
        .drop(columns=SPLIT_COLUMN)
        .reset_index(drop=True)
        for name in SPLITS
    }
    ranges = {
        name: TimeRange(part["hour_start"].min(), part["hour_start"].max() + HOUR)
        for name, part in parts.items()
    }
    return Split(**parts, ranges=ranges)


def baseline_predictions(test: pd.DataFrame) -> dict[str, np.ndarray]:
    """The simple forecasts every candidate is compared with, from the rows' own lags."""
    return {
        ZERO: zero_predict(test),
        SEASONAL_NAIVE: seasonal_naive_predict(test),
        SAME_HOUR_4W_MEAN: same_hour_of_week_mean_predict(test),
        YESTERDAY: yesterday_predict(test),
    }


# ---------------------------------------------------------------------------------------------
# Candidate model


@dataclass(frozen=True, eq=False)
class CandidateModel:
    """What ``busyness_model`` produces: the XGBoost model, the PoC baseline trained on the
    same split (None when disabled), and where MLflow keeps the run and the logged model."""

    trained: TrainedModel
    poc_baseline: RegressorMixin | None
    poc_params: dict[str, int] = field(default_factory=dict)
    poc_seconds: float | None = None
    mlflow_run_id: str = ""
    model_uri: str = ""

    @property
    def feature_names(self) -> list[str]:
        return self.trained.feature_names


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Test-slice metrics of every predictor (rows of ``metrics``: model, seasonal_naive and,
    when available, poc_random_forest and champion), where the model errs (by local hour of
    day and by hexagon), and what is wrong with its predictions (empty when sane)."""

    metrics: pd.DataFrame
    by_hour: pd.DataFrame
    by_hexagon: pd.DataFrame
    problems: list[str]
    test_rows: int
    test_range: TimeRange
    candidate_run_id: str = ""
    champion_version: str | None = None
    champion_note: str = ""
    # for the model card (core/model_card.py): the training rows, what the trees split on, and
    # what drives the busiest hexagons' forecasts
    train_range: TimeRange | None = None
    train_rows: int = 0
    # MAE of every predictor per band of actual orders (core/model.py: BUSYNESS_BANDS)
    by_band: pd.DataFrame | None = None
    importance: pd.Series | None = None
    busiest: pd.DataFrame | None = None

    def mae(self, predictor: str) -> float | None:
        return (
            float(self.metrics.loc[predictor, "mae"]) if predictor in self.metrics.index else None
        )


def evaluate(
    test: pd.DataFrame,
    predictions: Mapping[str, np.ndarray],
    candidate_run_id: str = "",
    champion_version: str | None = None,
    champion_note: str = "",
) -> Evaluation:
    """Score every predictor on the same test rows; ``predictions`` must include ``model`` and
    at least one of :data:`BASELINES` (the assets pass every :func:`baseline_predictions`).
    Metrics are computed only where a prediction is finite for every predictor, so a broken
    model shows up in ``problems`` rather than as a metric error."""
    if MODEL not in predictions:
        raise ValueError(f"evaluate needs a {MODEL!r} prediction")
    if not any(name in predictions for name in BASELINES):
        raise ValueError(f"evaluate needs a baseline prediction: one of {', '.join(BASELINES)}")
    if test.empty:
        raise ValueError("the test slice has no rows")
    model = np.asarray(predictions[MODEL], dtype="float64")
    finite = np.logical_and.reduce(
        [np.isfinite(np.asarray(p, "float64")) for p in predictions.values()]
    )
    actual = test[TARGET_COLUMN].to_numpy("float64")
    scored = {name: np.asarray(p, "float64")[finite] for name, p in predictions.items()}
    metrics = (
        metrics_table(actual[finite], scored)
        if finite.any()
        else pd.DataFrame(
            np.nan,
            index=pd.Index(list(predictions), name="predictor"),
            columns=["mae", "rmse", "r2", "poisson_deviance"],
        )
    )
    safe_model = np.where(np.isfinite(model), model, np.nan)
    return Evaluation(
        metrics=metrics,
        by_hour=error_by(test, safe_model, "hour_of_day"),
        by_hexagon=error_by(test, safe_model, "h3_cell"),
        problems=prediction_problems(model),
        test_rows=len(test),
        test_range=TimeRange(test["hour_start"].min(), test["hour_start"].max() + HOUR),
        candidate_run_id=candidate_run_id,
        champion_version=champion_version,
        champion_note=champion_note,
        by_band=mae_by_band(actual[finite], scored),
    )


def daily_totals(test: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """Actual and predicted orders summed per UTC day of the test rows, and their ratio: a
    model can have a fine MAE and still forecast a third of a normal day."""
    totals = (
        pd.DataFrame(
            {
                "day": test["hour_start"].dt.strftime("%Y-%m-%d").to_numpy(),
                "actual": test[TARGET_COLUMN].to_numpy("float64"),
                "predicted": np.asarray(predicted, dtype="float64"),
            }
        )
        .groupby("day")
        .sum()
    )
    totals["predicted_over_actual"] = totals["predicted"] / totals["actual"].where(
        totals["actual"] > 0
    )
    return totals.round(3)


# ---------------------------------------------------------------------------------------------
# Promotion gates


@dataclass(frozen=True)
class PromotionPolicy:
    """``min_improvement_vs_baselines``: the candidate's test MAE must be at least this fraction
    below the best baseline's (whichever of :data:`BASELINES` errs least on the same rows);
    ``champion_tolerance``: it may be at most this fraction above the current champion's MAE
    on the same test slice (retrains are noisy; a tiny regression should not freeze the
    champion forever, a real one must)."""

    min_improvement_vs_baselines: float = 0.0
    champion_tolerance: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.min_improvement_vs_baselines < 1:
            raise ValueError("min_improvement_vs_baselines must be in [0, 1)")
        if not self.champion_tolerance >= 0:  # also rejects NaN
            raise ValueError("champion_tolerance must be >= 0")


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    description: str
    metadata: dict[str, float | str] = field(default_factory=dict)


def beats_every_baseline(evaluation: Evaluation, policy: PromotionPolicy) -> GateResult:
    """The candidate must beat the best baseline on the test rows by the policy's margin."""
    model = evaluation.mae(MODEL)
    scores = {name: evaluation.mae(name) for name in BASELINES if evaluation.mae(name) is not None}
    best = min(scores, key=lambda name: scores[name])
    best_mae = scores[best]
    limit = (1 - policy.min_improvement_vs_baselines) * best_mae
    passed = bool(model is not None and np.isfinite(model) and model <= limit)
    improvement = 1 - model / best_mae if best_mae else (0.0 if model == 0 else -np.inf)
    return GateResult(
        "beats_every_baseline",
        passed,
        f"test MAE {model:.4f} vs the best baseline, {best}, {best_mae:.4f}: "
        f"{improvement:+.1%} better (required: {policy.min_improvement_vs_baselines:.0%})",
        {
            "model_mae": float(model),
            "best_baseline": best,
            "best_baseline_mae": float(best_mae),
            "improvement": float(improvement),
            "required_improvement": policy.min_improvement_vs_baselines,
            **{f"{name}_mae": float(value) for name, value in scores.items()},
        },
    )


def not_worse_than_champion(evaluation: Evaluation, policy: PromotionPolicy) -> GateResult:
    model, champion = evaluation.mae(MODEL), evaluation.mae(CHAMPION)
    if champion is None:
        return GateResult(
            "not_worse_than_champion",
            True,
            f"no champion to compare with: {evaluation.champion_note or 'none registered yet'}",
            {"model_mae": float(model)},
        )
    passed = bool(np.isfinite(model) and model <= champion * (1 + policy.champion_tolerance))
    return GateResult(
        "not_worse_than_champion",
        passed,
        f"test MAE {model:.4f} vs champion (version {evaluation.champion_version}) "
        f"{champion:.4f} on the same test slice (tolerance {policy.champion_tolerance:.0%})",
        {
            "model_mae": float(model),
            "champion_mae": float(champion),
            "champion_version": str(evaluation.champion_version),
            "tolerance": policy.champion_tolerance,
        },
    )


def predictions_are_sane(evaluation: Evaluation) -> GateResult:
    return GateResult(
        "predictions_are_sane",
        not evaluation.problems,
        "; ".join(evaluation.problems) or "finite, non-negative and not constant",
        {"test_rows": evaluation.test_rows},
    )


def promotion_gates(evaluation: Evaluation, policy: PromotionPolicy) -> list[GateResult]:
    """Every rule a candidate must pass before it may become the champion."""
    return [
        beats_every_baseline(evaluation, policy),
        not_worse_than_champion(evaluation, policy),
        predictions_are_sane(evaluation),
    ]
