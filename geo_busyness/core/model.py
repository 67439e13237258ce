"""Model lifecycle core: time-based split, XGBoost count model, baselines, metrics and checks.

Everything here is a plain function on the ``busyness_features`` frames (one row per
hexagon and UTC hour with the feature columns and the targets), so the training assets, the
evaluation checks and the benchmarks share one implementation. No Dagster, no MLflow.

The split is by time, never random: the PoC's random split put hours of the same day and
hexagon on both sides and its features were computed from the target rows themselves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from geo_busyness.core.features import TARGET_COLUMN

# XGBoost, Optuna and scikit-learn are imported where they are used: every Dagster run process
# imports this module, and most runs (ingestion, features, forecasts) never train.
if TYPE_CHECKING:
    import optuna
    import xgboost as xgb
    from sklearn.model_selection import BaseCrossValidator, GridSearchCV

HOUR = pd.Timedelta(hours=1)
# The PoC notebook's grid, kept exactly so the baseline is the model it shipped.
POC_PARAM_GRID: dict[str, list[int]] = {
    "max_depth": [4, 5],
    "min_samples_leaf": [50, 75],
    "n_estimators": [100, 150],
}
# sklearn's Poisson deviance is undefined for a zero prediction; a model that predicts
# exactly zero where orders happen is heavily (but finitely) penalized instead.
POISSON_EPSILON = 1e-6
# XGBoost's own defaults: the first trial of every objective in the search.
XGBOOST_DEFAULTS = {
    "max_depth": 6,
    "learning_rate": 0.3,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
}
TWEEDIE_DEFAULT_POWER = 1.5
# Share of the time budget for the search when a refit on all train rows follows it.
SEARCH_BUDGET_SHARE = 0.4
# The Poisson offset: every tree ensemble starts from the log of this feature (the cell's
# 4-week level times the city's same-hour profile) and learns corrections to it. Measured in
# BENCHMARKS.md ("The ceiling"): without it the trees lose to the feature used on its own,
# and on 9 weeks of history to the 4-week same-hour mean. The floor (orders per hour) keeps a
# cell without history at a small rate instead of log(0). The booster records the feature in
# its attributes, so every predictor of a saved model applies the same offset.
OFFSET_FEATURE = "orders_expected_4w"
OFFSET_FLOOR = 0.05
OFFSET_ATTRIBUTE = "offset_feature"
# Objectives whose margin is the log of the prediction, where a log offset means what it says.
LOG_LINK_OBJECTIVES = frozenset({"count:poisson", "reg:tweedie", "reg:gamma"})


# ---------------------------------------------------------------------------------------------
# Time-based split


@dataclass(frozen=True)
class SplitConfig:
    """Test = the last ``test_days`` of hours, validation the days before it, train the rest;
    ``gap_hours`` of rows are dropped between consecutive slices so the 1h/3h lags of the first
    validation or test hours do not sit right next to the hours the model was fitted on."""

    validation_days: int = 2
    test_days: int = 2
    gap_hours: int = 24

    def __post_init__(self) -> None:
        for name, low in (("validation_days", 1), ("test_days", 1), ("gap_hours", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @property
    def held_out_hours(self) -> int:
        """Hours at the end of the data not available for training."""
        return 24 * (self.validation_days + self.test_days) + 2 * self.gap_hours


@dataclass(frozen=True)
class TimeRange:
    """Half-open range of ``hour_start`` values: ``start <= hour_start < end``."""

    start: pd.Timestamp
    end: pd.Timestamp


@dataclass(frozen=True, eq=False)
class Split:
    """Train, validation and test rows (each sorted by hour, then hexagon) and their ranges."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    ranges: dict[str, TimeRange]


def time_split(features: pd.DataFrame, config: SplitConfig) -> Split:
    """Split feature rows by ``hour_start`` into train < gap < validation < gap < test.

    Slices are anchored on the last hour present, so the test slice is the most recent
    ``test_days`` of data. Raises ValueError when the data does not span enough hours for a
    non-empty train slice, or when a slice has no rows (e.g. missing partitions).
    """
    if features.empty:
        raise ValueError("time_split got no feature rows")
    hours = features["hour_start"]
    first, last = hours.min(), hours.max()
    end = last + HOUR
    test_start = end - pd.Timedelta(days=config.test_days)
    validation_end = test_start - pd.Timedelta(hours=config.gap_hours)
    validation_start = validation_end - pd.Timedelta(days=config.validation_days)
    train_end = validation_start - pd.Timedelta(hours=config.gap_hours)
    span_hours = int((end - first) / HOUR)
    if first >= train_end:
        raise ValueError(
            f"too little data for a time split: features cover {span_hours} hours "
            f"({first} to {last}), but validation_days={config.validation_days}, "
            f"test_days={config.test_days} and gap_hours={config.gap_hours} hold out the last "
            f"{config.held_out_hours} hours; need more than {config.held_out_hours} hours "
            "(more busyness_features partitions, or smaller validation/test/gap)"
        )
    ranges = {
        "train": TimeRange(first, train_end),
        "validation": TimeRange(validation_start, validation_end),
        "test": TimeRange(test_start, end),
    }
    slices = {}
    for name, span in ranges.items():
        rows = features.loc[(hours >= span.start) & (hours < span.end)]
        if rows.empty:
            raise ValueError(
                f"the {name} slice [{span.start}, {span.end}) has no feature rows; "
                "are busyness_features partitions missing in that range?"
            )
        slices[name] = rows.sort_values(["hour_start", "h3_cell"], ignore_index=True)
    return Split(**slices, ranges=ranges)


# ---------------------------------------------------------------------------------------------
# XGBoost busyness model


@dataclass(frozen=True)
class TrainingConfig:
    """Time-boxed Optuna (TPE) search for the XGBoost count model.

    The count objective is a hyperparameter of the study, and the first trials are XGBoost's
    defaults under each of ``objectives`` (so objectives are compared on equal terms before TPE
    explores): ``n_trials`` counts every trial and must cover them. TPE samples at random
    until 10 trials are done, so a small study is a seeded random search. Each trial is fitted
    on at most ``search_rows`` train rows (a seeded sample) and early-stopped on the validation
    slice. The search gets ``SEARCH_BUDGET_SHARE`` of ``time_budget_s``; when it ran on a
    sample, the winner is then refitted on every train row in the time left. Boosting stops at
    the deadline, so when the budget binds the result depends on machine speed; otherwise it
    depends only on ``seed``.
    """

    objectives: tuple[str, ...] = ("count:poisson", "reg:tweedie")
    n_trials: int = 12
    time_budget_s: float = 50.0
    max_rounds: int = 1000
    early_stopping_rounds: int = 30
    search_rows: int = 200_000
    seed: int = 0
    n_jobs: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(
                f"objectives must name distinct XGBoost objectives, got {self.objectives!r}"
            )
        for name in ("n_trials", "max_rounds", "early_stopping_rounds", "search_rows", "n_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n_trials < len(self.objectives):
            raise ValueError(
                f"n_trials={self.n_trials} cannot try XGBoost's defaults under each of the "
                f"{len(self.objectives)} objectives; use n_trials >= {len(self.objectives)} "
                "or fewer objectives"
            )
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s!r}")


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """The kept model (lowest validation MAE) and how it was found.

    ``params`` are the winner's XGBoost parameters besides ``objective`` (with
    ``tweedie_variance_power`` for ``reg:tweedie``). ``search_log`` has one entry per fit
    (phase ``search`` for each Optuna trial, then ``refit`` on all train rows when the search
    ran on a sample) with its trial number, rows, objective, params, rounds, why it stopped,
    validation MAE and seconds.
    """

    model: xgb.XGBRegressor
    objective: str
    params: dict[str, float | int]
    best_iteration: int
    validation_mae: float
    search_log: list[dict]
    seconds: float
    feature_names: list[str]


def _suggest(trial: optuna.Trial, objectives: tuple[str, ...]) -> tuple[str, dict]:
    """The objective, then the tree parameters that matter most (ranges around the defaults)."""
    objective = trial.suggest_categorical("objective", objectives)
    params: dict[str, float | int] = {
        "max_depth": trial.suggest_int("max_depth", 4, 10),
        "learning_rate": trial.suggest_float("learning_rate", 0.05, 0.4, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 50.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
    }
    if objective == "reg:tweedie":
        params["tweedie_variance_power"] = trial.suggest_float("tweedie_variance_power", 1.1, 1.9)
    return objective, params


def _defaults(objective: str) -> dict:
    """The enqueued first trial of ``objective``: XGBoost's defaults."""
    power = {"tweedie_variance_power": TWEEDIE_DEFAULT_POWER} if objective == "reg:tweedie" else {}
    return {"objective": objective, **XGBOOST_DEFAULTS, **power}


def _deadline_callback(deadline: float) -> xgb.callback.TrainingCallback:
    """A callback that stops boosting once the clock passes ``deadline`` (its ``hit`` says
    whether it did); early stopping's best round stays."""
    import xgboost as xgb

    class Deadline(xgb.callback.TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.hit = False

        def after_iteration(self, model, epoch, evals_log) -> bool:
            self.hit = time.perf_counter() >= deadline
            return self.hit

    return Deadline()


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; keep warnings only, and restore the caller's level."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def margin_offset(values) -> np.ndarray:
    """The base margin of rows from their offset feature: log of the expected orders, with
    an unknown (NaN) history at the floor."""
    values = np.nan_to_num(np.asarray(values, dtype="float64"), nan=0.0)
    return np.log(np.maximum(values, 0.0) + OFFSET_FLOOR)


def offset_feature(model: xgb.XGBRegressor | xgb.Booster) -> str | None:
    """The feature a saved model's offset comes from (None: a model trained without one)."""
    import xgboost as xgb

    booster = model if isinstance(model, xgb.Booster) else model.get_booster()
    return booster.attr(OFFSET_ATTRIBUTE)


def model_margin(model: xgb.XGBRegressor | xgb.Booster, frame: pd.DataFrame) -> np.ndarray | None:
    """The base margin of ``frame``'s rows for ``model`` (None for a model without offset)."""
    feature = offset_feature(model)
    return margin_offset(frame[feature]) if feature else None


def predict_orders(model: xgb.XGBRegressor, frame: pd.DataFrame, feature_names) -> np.ndarray:
    """Expected orders per row from a trained or loaded model, with its offset if it has one:
    the one call every predictor of the platform makes."""
    margin = model_margin(model, frame)
    return model.predict(frame[list(feature_names)], base_margin=margin).astype("float64")


def train_busyness_model(
    split: Split, feature_names: list[str], config: TrainingConfig
) -> TrainedModel:
    """Search the objective and parameters with Optuna, keep the best on validation MAE.

    Validation MAE is the goal metric, so it is both the early-stopping metric and the study's
    value. Uses ``tree_method="hist"`` (NaN lags are handled natively) and builds each quantile
    matrix once for all fits of a phase. Optuna's timeout only stops starting new trials; the
    deadline callback ends a fit that would overrun, and the first trial always runs so there
    is a model to return. Every fit starts from the Poisson offset (:data:`OFFSET_FEATURE`)
    when the features hold it and every searched objective has a log link.
    """
    import optuna
    import xgboost as xgb

    started = time.perf_counter()
    deadline = started + config.time_budget_s
    train = split.train
    rows = len(train)
    sampled = rows > config.search_rows
    if sampled:
        rng = np.random.default_rng(config.seed)
        train = train.iloc[np.sort(rng.choice(rows, config.search_rows, replace=False))]
    search_deadline = started + config.time_budget_s * (SEARCH_BUDGET_SHARE if sampled else 1.0)
    log_link = all(objective in LOG_LINK_OBJECTIVES for objective in config.objectives)
    offset = OFFSET_FEATURE if OFFSET_FEATURE in feature_names and log_link else None

    def margin(frame: pd.DataFrame) -> np.ndarray | None:
        return margin_offset(frame[offset]) if offset else None

    valid = xgb.DMatrix(
        split.validation[feature_names],
        split.validation[TARGET_COLUMN],
        base_margin=margin(split.validation),
    )
    search = xgb.QuantileDMatrix(
        train[feature_names], train[TARGET_COLUMN], base_margin=margin(train)
    )

    log: list[dict] = []
    kept: dict = {}

    def trial_mae(trial: optuna.Trial) -> float:
        objective, params = _suggest(trial, config.objectives)
        booster, entry = _fit(search, valid, objective, params, config, search_deadline)
        log.append({"phase": "search", "trial": trial.number, "rows": len(train), **entry})
        if not kept or entry["validation_mae"] < kept["mae"]:  # ties keep the earlier trial
            kept.update(
                mae=entry["validation_mae"],
                booster=booster,
                trial=trial.number,
                objective=objective,
                params=params,
            )
        return entry["validation_mae"]

    with _quiet_optuna():
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.seed)
        )
        for objective in config.objectives:
            study.enqueue_trial(_defaults(objective))
        # Optuna checks the timeout before every trial, even the first: run that one outside
        # it so a budget spent building the matrices still leaves a model to return.
        study.optimize(trial_mae, n_trials=1)
        study.optimize(
            trial_mae,
            n_trials=config.n_trials - 1,
            timeout=max(search_deadline - time.perf_counter(), 0.0),
        )
    mae, booster, objective, params = (kept[k] for k in ("mae", "booster", "objective", "params"))
    if sampled:
        full = xgb.QuantileDMatrix(
            split.train[feature_names], split.train[TARGET_COLUMN], base_margin=margin(split.train)
        )
        refit, entry = _fit(full, valid, objective, params, config, deadline)
        log.append({"phase": "refit", "trial": kept["trial"], "rows": rows, **entry})
        if entry["validation_mae"] <= mae:
            mae, booster = entry["validation_mae"], refit
    if offset:
        booster.set_attr(**{OFFSET_ATTRIBUTE: offset})
    model = xgb.XGBRegressor()
    model.load_model(booster.save_raw("ubj"))
    return TrainedModel(
        model=model,
        objective=objective,
        params=params,
        best_iteration=int(booster.best_iteration),
        validation_mae=mae,
        search_log=log,
        seconds=time.perf_counter() - started,
        feature_names=list(feature_names),
    )


def _fit(
    train: xgb.QuantileDMatrix,
    validation: xgb.DMatrix,
    objective: str,
    params: dict,
    config: TrainingConfig,
    deadline: float,
) -> tuple[xgb.Booster, dict]:
    """One fit, early-stopped on validation MAE and stopped at ``deadline``; its log entry."""
    import xgboost as xgb
    from sklearn.metrics import mean_absolute_error

    started = time.perf_counter()
    stop = _deadline_callback(deadline)
    booster = xgb.train(
        {
            "objective": objective,
            "tree_method": "hist",
            "eval_metric": "mae",
            "nthread": config.n_jobs,
            "seed": config.seed,
            **params,
        },
        train,
        num_boost_round=config.max_rounds,
        evals=[(validation, "validation")],
        # Early stopping first: the callbacks run until one asks to stop, and it must have
        # recorded the best round of an iteration the deadline ends.
        callbacks=[
            xgb.callback.EarlyStopping(
                rounds=config.early_stopping_rounds, metric_name="mae", data_name="validation"
            ),
            stop,
        ],
        verbose_eval=False,
    )
    predicted = booster.predict(validation, iteration_range=(0, booster.best_iteration + 1))
    rounds = booster.num_boosted_rounds()
    if stop.hit:
        stopped_by = "deadline"
    elif rounds == config.max_rounds:
        stopped_by = "max_rounds"
    else:
        stopped_by = "early_stopping"
    return booster, {
        "objective": objective,
        "params": dict(params),
        "best_iteration": int(booster.best_iteration),
        "rounds": rounds,
        "stopped_by": stopped_by,
        "validation_mae": float(mean_absolute_error(validation.get_label(), predicted)),
        "seconds": time.perf_counter() - started,
    }


def predict(trained: TrainedModel, frame: pd.DataFrame, feature_names: list[str]) -> np.ndarray:
    """Expected orders per row, from the early-stopped best iteration."""
    return predict_orders(trained.model, frame, feature_names)


# ---------------------------------------------------------------------------------------------
# Baselines


def seasonal_naive_predict(frame: pd.DataFrame) -> np.ndarray:
    """Same hour one week earlier (``orders_lag_168h``).

    Where that hour is unknown (its partition is missing or before the data starts), fall
    back to the mean of the last 168 known hours (``orders_mean_168h``), then to 0.
    """
    return (
        frame["orders_lag_168h"].fillna(frame["orders_mean_168h"]).fillna(0.0).to_numpy("float64")
    )


def zero_predict(frame: pd.DataFrame) -> np.ndarray:
    """Nothing happens: in a sparse city most cell-hours are zero, and a model must beat that."""
    return np.zeros(len(frame))


def yesterday_predict(frame: pd.DataFrame) -> np.ndarray:
    """Same hour one day earlier (``orders_lag_24h``), falling back like seasonal naive."""
    return frame["orders_lag_24h"].fillna(frame["orders_mean_168h"]).fillna(0.0).to_numpy("float64")


def same_hour_of_week_mean_predict(frame: pd.DataFrame) -> np.ndarray:
    """Mean of the same hour of the 4 previous weeks (``orders_same_hour_mean_4w``: weeks that
    are not known are left out, not zeros); where no week is known, seasonal naive's value."""
    return (
        frame["orders_same_hour_mean_4w"]
        .fillna(frame["orders_mean_168h"])
        .fillna(0.0)
        .to_numpy("float64")
    )


def train_poc_baseline(
    split: Split, feature_names: list[str], seed: int = 0, cv: int | BaseCrossValidator = 5
) -> tuple[GridSearchCV, float]:
    """The PoC's model: RandomForestRegressor + GridSearchCV over its exact grid, on train.

    ``cv=5`` is the PoC's GridSearchCV default (``KFold`` without shuffling, R² score), kept
    so the baseline costs what the PoC cost; the train rows are sorted by hour, so its folds
    are contiguous blocks of time rather than the PoC's leaky random rows. NaN lags go in as
    NaN: scikit-learn's random forest handles missing values since 1.4. Returns the fitted
    search (``best_estimator_`` refitted on all train rows) and its wall-clock seconds.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import GridSearchCV

    started = time.perf_counter()
    search = GridSearchCV(
        RandomForestRegressor(random_state=seed, n_jobs=-1), POC_PARAM_GRID, cv=cv
    )
    search.fit(split.train[feature_names], split.train[TARGET_COLUMN])
    return search, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Evaluation


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """MAE, RMSE, R² and mean Poisson deviance (predictions clipped to ``POISSON_EPSILON``)."""
    from sklearn.metrics import (
        mean_absolute_error,
        mean_poisson_deviance,
        r2_score,
        root_mean_squared_error,
    )

    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    return {
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
        "poisson_deviance": float(
            mean_poisson_deviance(y_true, np.maximum(y_pred, POISSON_EPSILON))
        ),
    }


def metrics_table(y_true, predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row of :func:`regression_metrics` per named predictor (model, baselines, champion)."""
    return pd.DataFrame(
        {name: regression_metrics(y_true, y_pred) for name, y_pred in predictions.items()}
    ).T.rename_axis("predictor")


def error_by(frame: pd.DataFrame, y_pred, column: str) -> pd.DataFrame:
    """Rows, mean actual, mean predicted and MAE per value of ``column`` (e.g. hour_of_day,
    h3_cell), to show where the model is wrong rather than only how much."""
    actual = frame[TARGET_COLUMN].to_numpy("float64")
    predicted = np.asarray(y_pred, dtype="float64")
    errors = pd.DataFrame(
        {
            column: frame[column].to_numpy(),
            "actual": actual,
            "predicted": predicted,
            "abs_error": np.abs(actual - predicted),
        }
    )
    return errors.groupby(column, sort=True).agg(
        rows=("actual", "size"),
        mean_actual=("actual", "mean"),
        mean_predicted=("predicted", "mean"),
        mae=("abs_error", "mean"),
    )


# Bands of actual orders per hexagon-hour: the busy cells are where couriers are sent, and an
# overall MAE dominated by the many quiet hours can hide errors there.
BUSYNESS_BANDS = (0, 1, 3, 6, 11)  # lower bounds: 0, 1-2, 3-5, 6-10, 11+


def _band_labels(bounds: tuple[int, ...]) -> list[str]:
    labels = []
    for low, high in zip(bounds, [*bounds[1:], None], strict=True):
        if high is None:
            labels.append(f"{low}+")
        elif high - low == 1:
            labels.append(str(low))
        else:
            labels.append(f"{low}-{high - 1}")
    return labels


def mae_by_band(
    y_true, predictions: dict[str, np.ndarray], bounds: tuple[int, ...] = BUSYNESS_BANDS
) -> pd.DataFrame:
    """Rows and MAE of every predictor per band of actual orders (rows: bands that occur)."""
    actual = np.asarray(y_true, dtype="float64")
    band = np.searchsorted(np.asarray(bounds, "float64"), actual, side="right") - 1
    frame = pd.DataFrame({"band": band})
    for name, predicted in predictions.items():
        frame[name] = np.abs(actual - np.asarray(predicted, dtype="float64"))
    table = frame.groupby("band").agg(
        rows=("band", "size"), **{n: (n, "mean") for n in predictions}
    )
    table.index = pd.Index([_band_labels(bounds)[i] for i in table.index], name="actual_orders")
    return table


def prediction_problems(y_pred) -> list[str]:
    """Why predictions are not sane busyness counts; empty when they are.

    Counts cannot be negative, every row needs a finite value, and a constant prediction
    means the model learned nothing (or a broken input collapsed every row to one value).
    """
    values = np.asarray(y_pred, dtype="float64")
    if values.size == 0:
        return ["no predictions"]
    problems = []
    finite = np.isfinite(values)
    if not finite.all():
        problems.append(f"{int((~finite).sum())} of {values.size} predictions are NaN or infinite")
    negative = int((values[finite] < 0).sum())
    if negative:
        problems.append(f"{negative} of {values.size} predictions are negative")
    if values.size > 1 and finite.any() and np.ptp(values[finite]) == 0:
        problems.append(f"all predictions are the constant {values[finite][0]:.6g}")
    return problems
