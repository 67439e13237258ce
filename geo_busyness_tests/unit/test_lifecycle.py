"""The model lifecycle core: the training set built from lazily loaded feature partitions
(only the window is read), its round trip back to a split, the evaluation of every predictor
on the same test rows, and the promotion gates at their boundaries. Small hand-built frames,
no simulation, no Dagster."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geo_busyness.core.lifecycle import (
    CHAMPION,
    MODEL,
    POC_BASELINE,
    SAME_HOUR_4W_MEAN,
    SEASONAL_NAIVE,
    SPLIT_COLUMN,
    SPLITS,
    YESTERDAY,
    ZERO,
    Evaluation,
    PromotionPolicy,
    beats_every_baseline,
    daily_totals,
    evaluate,
    not_worse_than_champion,
    predictions_are_sane,
    promotion_gates,
    resolution_advice,
    split_from_training_set,
    training_set_from_features,
)
from geo_busyness.core.model import (
    HOUR,
    SplitConfig,
    TimeRange,
    error_by,
    metrics_table,
    time_split,
)

pytestmark = pytest.mark.unit

CELLS = ("8a1fb46622dffff", "8a1fb46622e7fff")
# 7 days of hours: train 0..95, gap 96..107, validation 108..131, gap 132..143, test 144..167.
SPLIT = SplitConfig(validation_days=1, test_days=1, gap_hours=12)
FIRST_DAY = pd.Timestamp("2024-03-01")
ALL_DAYS = [(FIRST_DAY + pd.Timedelta(days=k)).strftime("%Y-%m-%d") for k in range(10)]
WINDOW_DAYS = ALL_DAYS[3:]  # the last 7 days


def day_features(day: str, cells: tuple[str, ...] = CELLS) -> pd.DataFrame:
    """One ``busyness_features``-like partition: every UTC hour of ``day`` for each cell."""
    hours = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=24, freq="h")
    rows = []
    for i, cell in enumerate(cells):
        for hour in hours:
            index = int((hour - pd.Timestamp(FIRST_DAY, tz="UTC")) / HOUR)
            orders = (index * 7 + i * 3) % 11
            rows.append(
                {
                    "h3_cell": cell,
                    "hour_start": hour,
                    "orders": orders,
                    "orders_lag_1h": float((orders + 5) % 11),
                    "orders_lag_168h": float(orders) if index >= 168 else np.nan,
                    "orders_mean_168h": 5.0,
                    "hour_of_day": hour.hour,
                    "is_weekend": int(hour.dayofweek >= 5),
                }
            )
    return pd.DataFrame(rows)


class CountingLoaders:
    """Loaders per day that count their calls; a day in ``forbidden`` fails the test if read."""

    def __init__(self, days, forbidden=()) -> None:
        self.calls: dict[str, int] = {}
        self.forbidden = set(forbidden)
        self.partitions = {day: self._loader(day) for day in days}

    def _loader(self, day: str):
        def load() -> pd.DataFrame:
            if day in self.forbidden:
                raise AssertionError(f"day {day} is outside the window and must not be loaded")
            self.calls[day] = self.calls.get(day, 0) + 1
            return day_features(day)

        return load


# ---------------------------------------------------------------------------------------------
# training_set_from_features


def test_training_set_loads_only_the_days_in_the_window_once_each():
    loaders = CountingLoaders(ALL_DAYS, forbidden=ALL_DAYS[:3])
    # Mapping order must not matter: the window ends at the latest day, not the last key.
    shuffled = {day: loaders.partitions[day] for day in reversed(ALL_DAYS)}

    training_set, _ = training_set_from_features(shuffled, window_days=7, split=SPLIT)

    assert loaders.calls == dict.fromkeys(WINDOW_DAYS, 1)
    assert training_set["hour_start"].min() == pd.Timestamp(WINDOW_DAYS[0], tz="UTC")
    assert training_set["hour_start"].max() == pd.Timestamp(f"{ALL_DAYS[-1]} 23:00", tz="UTC")


def test_training_set_window_of_one_more_day_reads_one_more_partition():
    loaders = CountingLoaders(ALL_DAYS, forbidden=ALL_DAYS[:2])
    training_set_from_features(loaders.partitions, window_days=8, split=SPLIT)
    assert sorted(loaders.calls) == ALL_DAYS[2:]


def test_training_set_slices_are_ordered_with_gaps_and_categorical_labels():
    loaders = CountingLoaders(ALL_DAYS)
    training_set, ranges = training_set_from_features(loaders.partitions, 7, SPLIT)

    assert isinstance(training_set[SPLIT_COLUMN].dtype, pd.CategoricalDtype)
    assert list(training_set[SPLIT_COLUMN].cat.categories) == list(SPLITS)
    counts = training_set[SPLIT_COLUMN].value_counts()
    # 96 train, 24 validation, 24 test hours of 2 cells; the 2 x 12 gap hours are dropped.
    assert counts.to_dict() == {"train": 192, "validation": 48, "test": 48}
    assert len(training_set) == 288

    hours = {
        name: training_set.loc[training_set[SPLIT_COLUMN] == name, "hour_start"] for name in SPLITS
    }
    gap = pd.Timedelta(hours=SPLIT.gap_hours)
    assert hours["validation"].min() - hours["train"].max() > gap
    assert hours["test"].min() - hours["validation"].max() > gap
    assert hours["validation"].min() - hours["train"].max() == gap + HOUR
    assert hours["test"].min() - hours["validation"].max() == gap + HOUR

    start = pd.Timestamp(WINDOW_DAYS[0], tz="UTC")
    assert ranges == {
        "train": TimeRange(start, start + 96 * HOUR),
        "validation": TimeRange(start + 108 * HOUR, start + 132 * HOUR),
        "test": TimeRange(start + 144 * HOUR, start + 168 * HOUR),
    }
    for name in SPLITS:
        assert hours[name].min() >= ranges[name].start
        assert hours[name].max() < ranges[name].end
    # No row of the gaps survives.
    in_gap = (
        (training_set["hour_start"] >= ranges["train"].end)
        & (training_set["hour_start"] < ranges["validation"].start)
    ) | (
        (training_set["hour_start"] >= ranges["validation"].end)
        & (training_set["hour_start"] < ranges["test"].start)
    )
    assert not in_gap.any()


def test_training_set_rows_equal_time_split_of_the_window():
    loaders = CountingLoaders(ALL_DAYS)
    training_set, _ = training_set_from_features(loaders.partitions, 7, SPLIT)
    expected = time_split(
        pd.concat([day_features(day) for day in WINDOW_DAYS], ignore_index=True), SPLIT
    )
    for name in SPLITS:
        got = (
            training_set.loc[training_set[SPLIT_COLUMN] == name]
            .drop(columns=SPLIT_COLUMN)
            .reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(got, getattr(expected, name))


def test_training_set_missing_day_inside_the_window_contributes_no_rows():
    # The second day of the window (train hours 24..47) was never materialized.
    days = [day for day in ALL_DAYS if day != WINDOW_DAYS[1]]
    loaders = CountingLoaders(days, forbidden=ALL_DAYS[:3])
    training_set, ranges = training_set_from_features(loaders.partitions, 7, SPLIT)

    assert sorted(loaders.calls) == [day for day in WINDOW_DAYS if day != WINDOW_DAYS[1]]
    counts = training_set[SPLIT_COLUMN].value_counts().to_dict()
    assert counts == {"train": 144, "validation": 48, "test": 48}
    missing = pd.Timestamp(WINDOW_DAYS[1], tz="UTC")
    assert not training_set["hour_start"].between(missing, missing + 23 * HOUR).any()
    # The window (and so the slices) still ends at the latest day.
    assert ranges["test"].end == pd.Timestamp(ALL_DAYS[-1], tz="UTC") + pd.Timedelta(days=1)


def test_training_set_without_partitions_raises():
    with pytest.raises(ValueError, match="no busyness_features partitions"):
        training_set_from_features({}, 7, SPLIT)


@pytest.mark.parametrize("window_days", [0, -3])
def test_training_set_rejects_a_window_below_one_day_without_loading(window_days):
    loaders = CountingLoaders(ALL_DAYS, forbidden=ALL_DAYS)
    with pytest.raises(ValueError, match="window_days must be >= 1"):
        training_set_from_features(loaders.partitions, window_days, SPLIT)
    assert loaders.calls == {}


@pytest.mark.parametrize("window_days", [1, 2, 3])
def test_training_set_with_too_little_data_raises(window_days):
    # 3 days = 72 hours = exactly the held-out hours: nothing is left to train on.
    loaders = CountingLoaders(ALL_DAYS)
    with pytest.raises(ValueError, match="too little data for a time split"):
        training_set_from_features(loaders.partitions, window_days, SPLIT)
    assert sorted(loaders.calls) == ALL_DAYS[-window_days:]


def test_training_set_with_only_the_held_out_days_present_raises():
    # A long window but only 3 days materialized: still too little data.
    loaders = CountingLoaders(ALL_DAYS[-3:])
    with pytest.raises(ValueError, match="too little data"):
        training_set_from_features(loaders.partitions, 30, SPLIT)


# ---------------------------------------------------------------------------------------------
# split_from_training_set


def test_split_from_training_set_round_trips_the_slices_and_ranges():
    loaders = CountingLoaders(ALL_DAYS)
    training_set, ranges = training_set_from_features(loaders.partitions, 7, SPLIT)

    split = split_from_training_set(training_set)

    for name in SPLITS:
        part = getattr(split, name)
        assert SPLIT_COLUMN not in part.columns
        expected = (
            training_set.loc[training_set[SPLIT_COLUMN] == name]
            .drop(columns=SPLIT_COLUMN)
            .reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(part, expected)
    assert (len(split.train), len(split.validation), len(split.test)) == (192, 48, 48)
    # Contiguous hours: the ranges from the rows present equal the split's own ranges.
    assert split.ranges == ranges


@pytest.mark.parametrize("dropped", ["train", "validation", "test"])
def test_split_from_training_set_names_a_missing_slice(dropped):
    loaders = CountingLoaders(ALL_DAYS)
    training_set, _ = training_set_from_features(loaders.partitions, 7, SPLIT)
    without = training_set.loc[training_set[SPLIT_COLUMN] != dropped]
    with pytest.raises(ValueError, match=f"no {dropped} rows"):
        split_from_training_set(without)


def test_split_from_training_set_names_every_missing_slice():
    loaders = CountingLoaders(ALL_DAYS)
    training_set, _ = training_set_from_features(loaders.partitions, 7, SPLIT)
    only_train = training_set.loc[training_set[SPLIT_COLUMN] == "train"]
    with pytest.raises(ValueError, match="no validation, test rows"):
        split_from_training_set(only_train)


# ---------------------------------------------------------------------------------------------
# evaluate


def small_test() -> pd.DataFrame:
    start = pd.Timestamp("2024-03-09 10:00", tz="UTC")
    return pd.DataFrame(
        {
            "h3_cell": ["a", "b", "a", "b", "a", "b"],
            "hour_start": [
                start,
                start,
                start + HOUR,
                start + HOUR,
                start + 2 * HOUR,
                start + 2 * HOUR,
            ],
            "hour_of_day": [11, 11, 12, 12, 13, 13],
            "orders": [3, 0, 5, 1, 8, 2],
        }
    )


PREDICTIONS = {
    MODEL: np.array([2.5, 0.5, 4.0, 1.5, 7.0, 2.0]),
    SEASONAL_NAIVE: np.array([1.0, 0.0, 6.0, 3.0, 5.0, 0.0]),
    POC_BASELINE: np.array([3.0, 1.0, 4.5, 1.0, 6.0, 3.0]),
}


def test_evaluate_metrics_match_metrics_table_for_every_predictor():
    test = small_test()
    evaluation = evaluate(test, PREDICTIONS, "run-1", "7", "current champion")

    expected = metrics_table(test["orders"].to_numpy("float64"), PREDICTIONS)
    pd.testing.assert_frame_equal(evaluation.metrics, expected)
    assert list(evaluation.metrics.index) == [MODEL, SEASONAL_NAIVE, POC_BASELINE]
    # By hand: |0.5|+|0.5|+|1|+|0.5|+|1|+|0| = 3.5 over 6 rows; naive: 2+0+1+2+3+2 = 10.
    assert evaluation.mae(MODEL) == pytest.approx(3.5 / 6)
    assert evaluation.mae(SEASONAL_NAIVE) == pytest.approx(10 / 6)
    assert evaluation.mae(CHAMPION) is None
    assert evaluation.problems == []
    assert evaluation.test_rows == 6
    start = pd.Timestamp("2024-03-09 10:00", tz="UTC")
    assert evaluation.test_range == TimeRange(start, start + 3 * HOUR)
    assert (evaluation.candidate_run_id, evaluation.champion_version) == ("run-1", "7")
    assert evaluation.champion_note == "current champion"


def test_evaluate_errors_by_hour_and_hexagon():
    test = small_test()
    evaluation = evaluate(test, PREDICTIONS)

    pd.testing.assert_frame_equal(
        evaluation.by_hour, error_by(test, PREDICTIONS[MODEL], "hour_of_day")
    )
    pd.testing.assert_frame_equal(
        evaluation.by_hexagon, error_by(test, PREDICTIONS[MODEL], "h3_cell")
    )
    assert list(evaluation.by_hour.index) == [11, 12, 13]
    assert evaluation.by_hour["mae"].tolist() == pytest.approx([0.5, 0.75, 0.5])
    assert list(evaluation.by_hexagon.index) == ["a", "b"]
    assert evaluation.by_hexagon["rows"].tolist() == [3, 3]
    assert evaluation.by_hexagon["mae"].tolist() == pytest.approx([2.5 / 3, 1.0 / 3])


def test_evaluate_requires_the_model_and_a_baseline():
    without_model = {k: v for k, v in PREDICTIONS.items() if k != MODEL}
    with pytest.raises(ValueError, match=repr(MODEL)):
        evaluate(small_test(), without_model)
    with pytest.raises(ValueError, match="needs a baseline prediction: one of zero, "):
        evaluate(small_test(), {MODEL: PREDICTIONS[MODEL]})


def test_evaluate_rejects_an_empty_test_slice():
    empty = small_test().iloc[:0]
    with pytest.raises(ValueError, match="no rows"):
        evaluate(empty, {MODEL: np.array([]), SEASONAL_NAIVE: np.array([])})


def test_evaluate_reports_non_finite_model_predictions_and_scores_finite_rows_only():
    test = small_test()
    model = PREDICTIONS[MODEL].copy()
    model[1], model[4] = np.nan, np.inf
    naive = PREDICTIONS[SEASONAL_NAIVE].copy()
    naive[2] = np.nan  # a non-finite baseline drops the row from every predictor's metrics
    predictions = {MODEL: model, SEASONAL_NAIVE: naive}

    evaluation = evaluate(test, predictions)

    assert evaluation.problems == ["2 of 6 predictions are NaN or infinite"]
    keep = np.array([True, False, False, True, False, True])
    expected = metrics_table(
        test["orders"].to_numpy("float64")[keep], {k: v[keep] for k, v in predictions.items()}
    )
    pd.testing.assert_frame_equal(evaluation.metrics, expected)
    assert np.isfinite(evaluation.metrics.to_numpy()).all()
    # Rows 0, 3, 5: model |0.5| + |0.5| + |0|, naive |2| + |2| + |2|.
    assert evaluation.mae(MODEL) == pytest.approx(1.0 / 3)
    assert evaluation.mae(SEASONAL_NAIVE) == pytest.approx(2.0)
    assert evaluation.test_rows == 6
    # The error tables keep every test row; the broken predictions are left out of the means.
    assert evaluation.by_hour["rows"].tolist() == [2, 2, 2]
    assert evaluation.by_hour.loc[11, "mae"] == pytest.approx(0.5)
    assert evaluation.by_hexagon.loc["b", "mae"] == pytest.approx(0.25)
    assert not predictions_are_sane(evaluation).passed


def test_evaluate_with_no_finite_row_gives_nan_metrics_and_fails_the_gates():
    test = small_test()
    predictions = {MODEL: np.full(6, np.nan), SEASONAL_NAIVE: PREDICTIONS[SEASONAL_NAIVE]}
    evaluation = evaluate(test, predictions)

    assert list(evaluation.metrics.index) == [MODEL, SEASONAL_NAIVE]
    assert list(evaluation.metrics.columns) == ["mae", "rmse", "r2", "poisson_deviance"]
    assert evaluation.metrics.isna().all().all()
    assert evaluation.problems == ["6 of 6 predictions are NaN or infinite"]
    assert [gate.passed for gate in promotion_gates(evaluation, PromotionPolicy())] == [
        False,
        True,
        False,
    ]


def test_evaluate_reports_negative_and_constant_predictions():
    test = small_test()
    negative = evaluate(test, {**PREDICTIONS, MODEL: PREDICTIONS[MODEL] - 1.0})
    assert negative.problems == ["1 of 6 predictions are negative"]
    constant = evaluate(test, {**PREDICTIONS, MODEL: np.full(6, 2.0)})
    assert constant.problems == ["all predictions are the constant 2"]


# ---------------------------------------------------------------------------------------------
# Promotion gates


def evaluation_with(
    maes: dict[str, float],
    problems: list[str] | None = None,
    champion_version: str | None = None,
    champion_note: str = "",
) -> Evaluation:
    """An evaluation whose metrics table has exactly these MAEs."""
    metrics = pd.DataFrame(
        {"mae": maes, "rmse": maes, "r2": dict.fromkeys(maes, 0.0), "poisson_deviance": maes}
    ).rename_axis("predictor")
    start = pd.Timestamp("2024-03-09", tz="UTC")
    empty = pd.DataFrame()
    return Evaluation(
        metrics=metrics,
        by_hour=empty,
        by_hexagon=empty,
        problems=problems or [],
        test_rows=48,
        test_range=TimeRange(start, start + 24 * HOUR),
        candidate_run_id="run",
        champion_version=champion_version,
        champion_note=champion_note,
    )


@pytest.mark.parametrize(
    ("naive", "margin"), [(10.0, 0.10), (1.0, 0.10), (7.3, 0.10), (5.0, 0.2), (3.0, 0.0)]
)
def test_beats_every_baseline_passes_exactly_at_the_required_improvement(naive, margin):
    policy = PromotionPolicy(min_improvement_vs_baselines=margin)
    at_limit = (1 - margin) * naive
    gate = beats_every_baseline(evaluation_with({MODEL: at_limit, SEASONAL_NAIVE: naive}), policy)
    assert gate.name == "beats_every_baseline"
    assert gate.passed is True
    assert gate.metadata["model_mae"] == at_limit
    assert gate.metadata["seasonal_naive_mae"] == naive
    assert gate.metadata["improvement"] == pytest.approx(margin)
    assert gate.metadata["required_improvement"] == margin

    above = np.nextafter(at_limit, np.inf)
    gate = beats_every_baseline(evaluation_with({MODEL: above, SEASONAL_NAIVE: naive}), policy)
    assert gate.passed is False


def test_beats_every_baseline_with_margin_0_10_through_evaluate():
    # Exact in floating point: model MAE 9 = 0.9 x naive MAE 10.
    test = small_test().iloc[:2]  # orders 3, 0
    at_limit = evaluate(
        test, {MODEL: np.array([12.0, 9.0]), SEASONAL_NAIVE: np.array([13.0, 10.0])}
    )
    assert (at_limit.mae(MODEL), at_limit.mae(SEASONAL_NAIVE)) == (9.0, 10.0)
    gate = beats_every_baseline(at_limit, PromotionPolicy(min_improvement_vs_baselines=0.10))
    assert gate.passed is True
    assert "+10.0% better (required: 10%)" in gate.description

    above = evaluate(test, {MODEL: np.array([12.0, 9.02]), SEASONAL_NAIVE: np.array([13.0, 10.0])})
    assert above.mae(MODEL) == pytest.approx(9.01)
    assert (
        beats_every_baseline(above, PromotionPolicy(min_improvement_vs_baselines=0.10)).passed
        is False
    )


def test_beats_every_baseline_fails_a_model_worse_than_naive():
    gate = beats_every_baseline(
        evaluation_with({MODEL: 12.0, SEASONAL_NAIVE: 10.0}), PromotionPolicy()
    )
    assert gate.passed is False
    assert gate.metadata["improvement"] == pytest.approx(-0.2)
    assert "-20.0% better" in gate.description


@pytest.mark.parametrize(
    ("champion", "tolerance"), [(10.0, 0.02), (8.0, 0.25), (3.7, 0.0), (1.0, 0.02)]
)
def test_not_worse_than_champion_passes_exactly_at_the_tolerance(champion, tolerance):
    policy = PromotionPolicy(champion_tolerance=tolerance)
    at_limit = champion * (1 + tolerance)
    evaluation = evaluation_with(
        {MODEL: at_limit, SEASONAL_NAIVE: 20.0, CHAMPION: champion}, champion_version="3"
    )
    gate = not_worse_than_champion(evaluation, policy)
    assert gate.name == "not_worse_than_champion"
    assert gate.passed is True
    assert gate.metadata == {
        "model_mae": at_limit,
        "champion_mae": champion,
        "champion_version": "3",
        "tolerance": tolerance,
    }
    assert "champion (version 3)" in gate.description

    above = np.nextafter(at_limit, np.inf)
    evaluation = evaluation_with({MODEL: above, SEASONAL_NAIVE: 20.0, CHAMPION: champion})
    assert not_worse_than_champion(evaluation, policy).passed is False


def test_not_worse_than_champion_boundary_through_evaluate():
    # Champion MAE 8, tolerance 25%: the model may reach MAE 10 and no more.
    test = small_test().iloc[:2]  # orders 3, 0
    naive = np.array([30.0, 20.0])
    champion = np.array([11.0, 8.0])
    policy = PromotionPolicy(champion_tolerance=0.25)
    at_limit = evaluate(
        test, {MODEL: np.array([13.0, 10.0]), SEASONAL_NAIVE: naive, CHAMPION: champion}
    )
    assert (at_limit.mae(MODEL), at_limit.mae(CHAMPION)) == (10.0, 8.0)
    assert not_worse_than_champion(at_limit, policy).passed is True
    above = evaluate(
        test, {MODEL: np.array([13.0, 10.02]), SEASONAL_NAIVE: naive, CHAMPION: champion}
    )
    assert not_worse_than_champion(above, policy).passed is False


@pytest.mark.parametrize(
    ("note", "shown"),
    [
        ("champion model failed to load: boom", "champion model failed to load: boom"),
        ("", "none registered yet"),
    ],
)
def test_not_worse_than_champion_passes_without_a_champion_and_says_why(note, shown):
    evaluation = evaluation_with({MODEL: 50.0, SEASONAL_NAIVE: 10.0}, champion_note=note)
    gate = not_worse_than_champion(evaluation, PromotionPolicy())
    assert gate.passed is True
    assert gate.description == f"no champion to compare with: {shown}"
    assert gate.metadata == {"model_mae": 50.0}


def test_not_worse_than_champion_fails_a_nan_model_mae():
    evaluation = evaluation_with({MODEL: math.nan, SEASONAL_NAIVE: 10.0, CHAMPION: 5.0})
    assert not_worse_than_champion(evaluation, PromotionPolicy()).passed is False


def test_predictions_are_sane_passes_without_problems_and_fails_with_them():
    sane = predictions_are_sane(evaluation_with({MODEL: 1.0, SEASONAL_NAIVE: 2.0}))
    assert (sane.name, sane.passed) == ("predictions_are_sane", True)
    assert sane.description == "finite, non-negative and not constant"
    assert sane.metadata == {"test_rows": 48}

    problems = ["3 of 48 predictions are NaN or infinite", "2 of 48 predictions are negative"]
    insane = predictions_are_sane(evaluation_with({MODEL: 1.0, SEASONAL_NAIVE: 2.0}, problems))
    assert insane.passed is False
    assert insane.description == "; ".join(problems)


def test_a_model_that_loses_to_predicting_zero_is_refused_naming_zero():
    """Sparse real data: zero everywhere scores 0.776, seasonal naive 1.2, the model 1.036."""
    gate = beats_every_baseline(
        evaluation_with({MODEL: 1.036, ZERO: 0.776, SEASONAL_NAIVE: 1.2, YESTERDAY: 1.4}),
        PromotionPolicy(),
    )
    assert gate.passed is False
    assert gate.metadata["best_baseline"] == ZERO
    assert gate.description == (
        "test MAE 1.0360 vs the best baseline, zero, 0.7760: -33.5% better (required: 0%)"
    )
    assert gate.metadata["seasonal_naive_mae"] == 1.2  # every baseline's error is kept


def test_the_gate_compares_with_the_best_baseline_not_the_first():
    maes = {MODEL: 8.0, ZERO: 30.0, SEASONAL_NAIVE: 10.0, SAME_HOUR_4W_MEAN: 8.5, YESTERDAY: 12.0}
    gate = beats_every_baseline(evaluation_with(maes), PromotionPolicy(0.10))
    assert (gate.passed, gate.metadata["best_baseline"]) == (False, SAME_HOUR_4W_MEAN)
    lenient = beats_every_baseline(
        evaluation_with(maes), PromotionPolicy(min_improvement_vs_baselines=0.05)
    )
    assert lenient.passed is True  # 8.0 <= 0.95 * 8.5
    with_poc = beats_every_baseline(
        evaluation_with({**maes, POC_BASELINE: 7.0}), PromotionPolicy(0.10)
    )
    assert with_poc.metadata["best_baseline"] == POC_BASELINE and not with_poc.passed


def test_promotion_gates_lists_every_rule_in_order():
    good = evaluation_with({MODEL: 8.0, SEASONAL_NAIVE: 10.0, CHAMPION: 8.1}, champion_version="2")
    gates = promotion_gates(good, PromotionPolicy())
    assert [gate.name for gate in gates] == [
        "beats_every_baseline",
        "not_worse_than_champion",
        "predictions_are_sane",
    ]
    assert all(gate.passed for gate in gates)

    insane = evaluation_with(
        {MODEL: 8.0, SEASONAL_NAIVE: 10.0}, problems=["all predictions are the constant 8"]
    )
    assert [gate.passed for gate in promotion_gates(insane, PromotionPolicy())] == [
        True,
        True,
        False,
    ]

    worse = evaluation_with({MODEL: 10.5, SEASONAL_NAIVE: 10.0, CHAMPION: 8.0})
    assert [gate.passed for gate in promotion_gates(worse, PromotionPolicy())] == [
        False,
        False,
        True,
    ]


def test_promotion_gates_on_a_real_evaluation():
    test = small_test()
    evaluation = evaluate(test, PREDICTIONS, champion_note="no champion alias yet")
    gates = {gate.name: gate for gate in promotion_gates(evaluation, PromotionPolicy())}
    # Model MAE 0.583 vs naive 1.667 and the PoC 0.75, the best baseline: 22% better.
    assert gates["beats_every_baseline"].passed is True
    assert gates["beats_every_baseline"].metadata["best_baseline"] == POC_BASELINE
    assert gates["beats_every_baseline"].metadata["improvement"] == pytest.approx(
        1 - (3.5 / 6) / 0.75
    )
    assert gates["not_worse_than_champion"].description.endswith("no champion alias yet")
    assert gates["predictions_are_sane"].passed is True


# ---------------------------------------------------------------------------------------------
# PromotionPolicy


def test_promotion_policy_defaults_and_valid_edges():
    # 0: never worse than the best baseline. On the simulated city the model beats the best
    # one (the 4-week same-hour mean) by 8.5% and no forecast can by more than ~16%
    # (BENCHMARKS.md, "The ceiling"), so a margin of a few percent would refuse most candidates
    assert PromotionPolicy() == PromotionPolicy(0.0, 0.02)
    PromotionPolicy(min_improvement_vs_baselines=0.0, champion_tolerance=0.0)
    PromotionPolicy(min_improvement_vs_baselines=0.99, champion_tolerance=1.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_improvement_vs_baselines": -0.01}, "min_improvement_vs_baselines"),
        ({"min_improvement_vs_baselines": 1.0}, "min_improvement_vs_baselines"),
        ({"min_improvement_vs_baselines": 1.5}, "min_improvement_vs_baselines"),
        ({"min_improvement_vs_baselines": math.nan}, "min_improvement_vs_baselines"),
        ({"champion_tolerance": -0.01}, "champion_tolerance"),
    ],
)
def test_promotion_policy_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromotionPolicy(**kwargs)


def test_promotion_policy_rejects_a_nan_champion_tolerance():
    with pytest.raises(ValueError, match="champion_tolerance"):
        PromotionPolicy(champion_tolerance=math.nan)


def test_resolution_advice_names_the_counts_of_a_city_too_sparse_for_its_resolution():
    sparse = pd.DataFrame({"h3_cell": ["a", "b"] * 50, "orders": [0] * 90 + [1] * 10})
    advice = resolution_advice(sparse, 8)
    assert advice == (
        "90% of 100 hexagon-hours have no order at H3 resolution 8 (mean 0.10 orders per "
        "hexagon-hour, 2 hexagons): too sparse to learn much beyond zero; h3_resolution 7 in "
        "the city catalog would pool about 7 hexagons into one"
    )
    dense = sparse.assign(orders=[0] * 50 + [2] * 50)
    assert resolution_advice(dense, 8) is None


def test_daily_totals_show_a_forecast_that_sums_to_a_fraction_of_the_day():
    test = pd.DataFrame(
        {
            "hour_start": pd.to_datetime(
                ["2026-10-01 10:00", "2026-10-01 11:00", "2026-10-02 10:00"], utc=True
            ),
            "orders": [300, 400, 0],
        }
    )
    totals = daily_totals(test, np.array([100.0, 132.0, 5.0]))
    assert totals.loc["2026-10-01"].tolist() == [700.0, 232.0, 0.331]
    assert np.isnan(totals.loc["2026-10-02", "predicted_over_actual"])  # no actual orders
