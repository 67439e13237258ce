"""The candidate against every baseline, over search seeds, on the default and a sparse city.

Two simulated scenarios go through the core functions the assets use (``simulated_city``:
reading, validation, ``hex_hourly_busyness``, clusters; then ``busyness_features`` and a
28-day ``training_set_from_features`` with the default ``SplitConfig``):

* ``default``: the packaged city (Regina) as the demo simulates it, 35 days;
* ``default_9w``: the same city over 63 days, so that every training day has its full
  4-week history (as a city in production has);
* ``sparse``: shaped like a small real delivery city: 10 restaurants, 25 couriers, 1,200
  pings a day (most hexagon-hours without an order), two days missing in the middle of the
  history, and an export that ends at 04:00 UTC on its last day.

For each search seed, ``train_busyness_model`` with ``TrainingConfig(seed=s, n_jobs=1,
time_budget_s=900)`` (the platform's 12 trials run to completion on one thread, so the machine's
load does not cut them short), then the test slice is scored for the model and every baseline
of ``baseline_predictions``, and the promotion gate ``beats_every_baseline`` (the default
policy) gives its verdict. Also per test day: predicted against actual total orders (the
calibration the 232-against-700 forecast lacked), and the share of zero targets.

The ceiling: each test day is simulated again ``--draws`` times with fresh draws of the same
world (``SimulationConfig.draw``: the same restaurants, couriers and day volume, orders, pings
and dirt drawn anew), and each test row's median over the draws is scored as ``oracle``. The
median of the predictive distribution is the forecast with the lowest expected absolute
error, and this one even knows the day's volume, which a day-ahead forecast does not: no
model can expect a lower MAE. It says how much of a goal the data allows.

Two experiments, not platform predictors: ``profile_4w`` scores the feature
``orders_expected_4w`` (the cell's mean hour over 4 weeks times the city's same-hour profile) as
a forecast on its own, and ``offset_xgboost`` trains XGBoost (defaults, each objective,
early-stopped on validation) from a Poisson offset, ``base_margin`` = log of that feature, so
the trees learn only corrections to it; the best objective on validation is scored. And
``model_median``: the Poisson median of the model's rate (the MAE-optimal point of a Poisson
count), with its summed forecast beside the expected one in ``daily_totals``.

    nice -n 10 .venv/bin/python scripts/compare_baselines.py --seeds 0 1 2 3 4   # ~5 min here
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import xgboost as xgb
from scipy import stats

from geo_busyness.core.features import (
    HOURLY_KEY,
    TARGET_COLUMN,
    busyness_features,
    feature_columns,
    hex_hourly_busyness,
)
from geo_busyness.core.lifecycle import (
    BASELINES,
    MODEL,
    PromotionPolicy,
    baseline_predictions,
    beats_every_baseline,
    daily_totals,
    evaluate,
    split_from_training_set,
    training_set_from_features,
)
from geo_busyness.core.model import (
    OFFSET_FEATURE,
    SplitConfig,
    TrainingConfig,
    margin_offset,
    predict,
    train_busyness_model,
)
from geo_busyness.simulate import SimulationConfig, clean_pings_of_day, simulated_city

START = dt.date(2026, 9, 1)
ORACLE, MODEL_MEDIAN = "oracle", "model_median"
PROFILE, OFFSET_XGBOOST = "profile_4w", "offset_xgboost"
SCENARIOS = {
    "default": (SimulationConfig(start_date=START, days=35), ()),
    "sparse": (
        SimulationConfig(
            start_date=START,
            days=35,
            pings_per_day=1_200,
            n_restaurants=10,
            n_couriers=25,
            last_day_ends_at_hour=4,
        ),
        ("2026-09-20", "2026-09-21"),
    ),
    # 9 weeks: every training day has its 4 weeks of same-hour history
    "default_9w": (SimulationConfig(start_date=START, days=63), ()),
}


def training_set(config: SimulationConfig, missing_days: tuple[str, ...]) -> pd.DataFrame:
    city = simulated_city(config)
    hourly = {day: frame for day, frame in city.hourly.items() if day not in missing_days}
    days = sorted(hourly)[1:]
    features = {
        day: busyness_features(hourly, day, city.restaurant_clusters, config.city) for day in days
    }
    labelled, _ = training_set_from_features(
        {day: (lambda frame=frame: frame) for day, frame in features.items()}, 28, SplitConfig()
    )
    return labelled


def oracle_predict(config: SimulationConfig, test: pd.DataFrame, draws: int) -> np.ndarray:
    """Per test row, the median of its orders over ``draws`` fresh draws of its day: the
    lowest-expected-MAE forecast of one who knows every parameter of the simulator and the
    day's volume."""
    keys = pd.MultiIndex.from_arrays(
        [test["h3_cell"].astype(str), test["hour_start"]], names=list(HOURLY_KEY)
    )
    days = sorted({stamp.date() for stamp in test["hour_start"]})
    samples = np.empty((draws, len(test)))
    for k in range(draws):
        drawn = dataclasses.replace(config, draw=k + 1)
        hourly = pd.concat(
            [
                hex_hourly_busyness(clean_pings_of_day(drawn, day), config.city.h3_resolution)
                for day in days
            ]
        )
        orders = hourly.astype({"h3_cell": str}).set_index(list(HOURLY_KEY))[TARGET_COLUMN]
        samples[k] = orders.reindex(keys).fillna(0).to_numpy()
    return np.median(samples, axis=0)


def offset_xgboost_predict(split, names: list[str]) -> np.ndarray:
    """XGBoost from the profile estimate as a Poisson offset, the objective picked on
    validation MAE."""

    def matrix(frame: pd.DataFrame) -> xgb.DMatrix:
        offset = margin_offset(frame[OFFSET_FEATURE])
        return xgb.DMatrix(frame[names], label=frame[TARGET_COLUMN], base_margin=offset)

    train, valid, test = (matrix(f) for f in (split.train, split.validation, split.test))
    best = None
    for objective in TrainingConfig().objectives:
        booster = xgb.train(
            {"objective": objective, "nthread": 1, "eval_metric": "mae"},
            train,
            2_000,
            evals=[(valid, "validation")],
            early_stopping_rounds=30,
            verbose_eval=False,
        )
        if best is None or booster.best_score < best.best_score:
            best = booster
    return best.predict(test, iteration_range=(0, best.best_iteration + 1))


def run(scenario: str, seeds: list[int], draws: int) -> list[dict]:
    config, missing = SCENARIOS[scenario]
    labelled = training_set(config, missing)
    split = split_from_training_set(labelled)
    names = feature_columns(config.city.n_restaurant_clusters)
    actual = split.test[TARGET_COLUMN].to_numpy(float)
    references = {
        PROFILE: split.test[OFFSET_FEATURE].fillna(0).to_numpy(float),
        OFFSET_XGBOOST: offset_xgboost_predict(split, names),
        ORACLE: oracle_predict(config, split.test, draws),
    }
    reference_mae = {
        name: round(float(np.abs(actual - values).mean()), 4) for name, values in references.items()
    }
    results = []
    for seed in seeds:
        trained = train_busyness_model(
            split, names, TrainingConfig(seed=seed, n_jobs=1, time_budget_s=900)
        )
        test = split.test
        predictions = {MODEL: predict(trained, test, names), **baseline_predictions(test)}
        evaluation = evaluate(test, predictions)
        gate = beats_every_baseline(evaluation, PromotionPolicy())
        median = stats.poisson.median(np.maximum(predictions[MODEL], 1e-9))
        totals = daily_totals(test, predictions[MODEL])
        totals["predicted_median"] = daily_totals(test, median)["predicted"]
        results.append(
            {
                "scenario": scenario,
                "seed": seed,
                "objective": trained.objective,
                "test_rows": len(test),
                "zero_target_share": round(float((test[TARGET_COLUMN] == 0).mean()), 3),
                "mae": {
                    name: round(float(evaluation.mae(name)), 4)
                    for name in (MODEL, *BASELINES)
                    if evaluation.mae(name) is not None
                }
                | {MODEL_MEDIAN: round(float(np.abs(actual - median).mean()), 4)}
                | reference_mae,
                "gate": {"passed": gate.passed, "description": gate.description},
                "daily_totals": totals.to_dict(orient="index"),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def summary(results: list[dict]) -> str:
    lines = [
        "| scenario | predictor | test MAE min / median / max | vs best baseline (median) |",
        "|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        rows = [r for r in results if r["scenario"] == scenario]
        if not rows:
            continue
        best = min(
            (name for name in BASELINES if name in rows[0]["mae"]),
            key=lambda name: np.median([r["mae"][name] for r in rows]),
        )
        best_mae = np.median([r["mae"][best] for r in rows])
        for name in rows[0]["mae"]:
            values = [r["mae"][name] for r in rows]
            med = np.median(values)
            lines.append(
                f"| {scenario} | {name} | {min(values):.3f} / {med:.3f} / {max(values):.3f} | "
                f"{1 - med / best_mae:+.1%} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--draws", type=int, default=101, help="draws of each test day (ceiling)")
    args = parser.parse_args()
    results = [r for scenario in args.scenarios for r in run(scenario, args.seeds, args.draws)]
    print(summary(results))


if __name__ == "__main__":
    main()
