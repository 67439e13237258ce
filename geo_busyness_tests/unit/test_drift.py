"""Drift core: Evidently finds no drift between two samples of the same days and finds the
new restaurant district, the forecast error growth on a hand-made example, and the
retraining decision at its boundaries. Simulated cities, no Dagster."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest

from geo_busyness.core.drift import (
    CALENDAR_COLUMNS,
    DRIFT_TABLE_COLUMNS,
    DriftThresholds,
    drift_chart_png,
    feature_drift,
    forecast_error_growth,
    monitored_columns,
    needs_retraining,
)
from geo_busyness.core.features import feature_columns
from geo_busyness.simulate import SimulationConfig, simulated_city

pytestmark = pytest.mark.unit

START = datetime.date(2026, 10, 1)
DISTRICT_OPENS = START + datetime.timedelta(days=10)
DAYS = 14
COLUMNS = monitored_columns(feature_columns(SimulationConfig().city.n_restaurant_clusters))


def _days(first: int, last: int) -> list[str]:
    return [(START + datetime.timedelta(days=k - 1)).isoformat() for k in range(first, last + 1)]


REFERENCE_DAYS = _days(3, 10)  # before the district opens
CURRENT_DAY = _days(13, 13)[0]  # three days after


def _features(scenario: str) -> dict[str, pd.DataFrame]:
    config = SimulationConfig(
        start_date=START,
        days=DAYS,
        dirty_files=False,
        scenario=scenario,
        scenario_start=DISTRICT_OPENS if scenario != "baseline" else None,
    )
    return simulated_city(config).features


@pytest.fixture(scope="module")
def baseline() -> dict[str, pd.DataFrame]:
    return _features("baseline")


@pytest.fixture(scope="module")
def new_district() -> dict[str, pd.DataFrame]:
    return _features("new_district")


def _reference(features: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([features[key] for key in REFERENCE_DAYS], ignore_index=True)


@pytest.fixture(scope="module")
def district_drift(new_district):
    return feature_drift(_reference(new_district), new_district[CURRENT_DAY], COLUMNS)


def test_calendar_columns_are_not_monitored():
    assert not set(CALENDAR_COLUMNS) & set(COLUMNS)
    assert "restaurants_in_cell" in COLUMNS


def test_two_samples_of_the_same_days_do_not_drift(baseline):
    rows = _reference(baseline)
    half = np.random.default_rng(0).random(len(rows)) < 0.5
    result = feature_drift(rows[half], rows[~half], COLUMNS)
    assert list(result.columns.columns) == list(DRIFT_TABLE_COLUMNS)
    assert sorted(result.columns["column"]) == sorted(COLUMNS)
    assert result.drift_share <= 0.05
    assert not result.dataset_drift
    assert "<html" in result.html[:2000].lower()


def test_a_new_district_drifts_more_than_a_baseline_day(baseline, district_drift):
    calm = feature_drift(_reference(baseline), baseline[CURRENT_DAY], COLUMNS)
    assert calm.drift_share <= 0.15
    assert district_drift.drift_share >= calm.drift_share + 0.15
    assert district_drift.n_drifted == len(district_drift.drifted_columns)
    assert district_drift.drift_share == pytest.approx(district_drift.n_drifted / len(COLUMNS))
    # The district brings restaurant-dense hexagons and moves the distances to the clusters.
    drifted = set(district_drift.drifted_columns)
    assert "restaurants_in_cell" in drifted
    assert "restaurants_in_cell" not in calm.drifted_columns
    assert len({name for name in drifted if name.startswith("cluster_")}) >= 2


def test_drifted_flags_follow_each_stattest_direction(district_drift):
    table = district_drift.columns
    p_value = table["stattest"].str.contains("p_value")
    beyond = np.where(
        p_value,
        table["drift_score"] < table["threshold"],
        table["drift_score"] >= table["threshold"],
    )
    np.testing.assert_array_equal(table["drifted"].to_numpy(), beyond)


def test_chart_of_the_drifted_columns(new_district, district_drift):
    png = drift_chart_png(_reference(new_district), new_district[CURRENT_DAY], district_drift)
    assert png is not None and png.startswith(b"\x89PNG")


def test_reference_is_sampled_to_a_bounded_seeded_size(baseline):
    reference = _reference(baseline)
    current = baseline[CURRENT_DAY]
    first = feature_drift(reference, current, COLUMNS, max_reference_rows=1_000, seed=3)
    again = feature_drift(reference, current, COLUMNS, max_reference_rows=1_000, seed=3)
    assert (first.reference_rows, first.reference_rows_available) == (1_000, len(reference))
    assert first.current_rows == len(current)
    pd.testing.assert_frame_equal(first.columns, again.columns)


def test_untestable_columns_are_skipped_with_the_reason(baseline):
    reference = _reference(baseline).assign(empty_today=1.0, label="x")
    current = baseline[CURRENT_DAY].assign(empty_today=np.nan, label="y")
    result = feature_drift(reference, current, [*COLUMNS[:3], "empty_today", "label"])
    assert result.skipped == {
        "empty_today": "no finite value in the current data",
        "label": "not numeric (object)",
    }
    assert result.columns["column"].tolist() == COLUMNS[:3]


@pytest.mark.parametrize(
    ("reference_rows", "columns", "message"),
    [
        (0, COLUMNS, "reference data has no rows"),
        (None, [*COLUMNS, "nope"], r"lacks columns \['nope'\]"),
        (None, [], "no columns"),
    ],
)
def test_feature_drift_refuses_what_it_cannot_compare(baseline, reference_rows, columns, message):
    reference = _reference(baseline).head(reference_rows)
    with pytest.raises(ValueError, match=message):
        feature_drift(reference, baseline[CURRENT_DAY], columns)


# ---------------------------------------------------------------------------------------------
# Forecast error growth

HOUR = pd.Timestamp("2026-10-13 00:00", tz="UTC")


def _hours(*offsets: int) -> list[pd.Timestamp]:
    return [HOUR + pd.Timedelta(hours=h) for h in offsets]


def _forecast() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "h3_cell": ["a", "a", "b"],
            "hour_start": _hours(0, 1, 0),
            "busyness_forecast": [2.0, 1.0, 0.5],
        }
    )


def _actual() -> pd.DataFrame:
    # (a, 1h) had no order, so it is absent; c was not forecast at all.
    return pd.DataFrame(
        {"h3_cell": ["a", "b", "c"], "hour_start": _hours(0, 0, 1), "orders": [3, 1, 4]}
    )


def test_error_growth_on_a_hand_made_day():
    growth = forecast_error_growth(_forecast(), _actual(), training_mae=0.5)
    # |2 - 3| + |1 - 0| + |0.5 - 1| over 3 hexagon-hours.
    assert growth.forecast_mae == pytest.approx(2.5 / 3)
    assert growth.error_ratio == pytest.approx(2.5 / 3 / 0.5)
    assert growth.hexagon_hours == 3
    assert growth.predicted_orders == pytest.approx(3.5)
    assert growth.actual_orders == 8
    assert (growth.uncovered_orders, growth.uncovered_hexagons) == (4, 1)


def test_a_perfect_forecast_has_no_error():
    forecast = _forecast().assign(busyness_forecast=[3.0, 0.0, 1.0])
    growth = forecast_error_growth(forecast, _actual(), training_mae=1.0)
    assert (growth.forecast_mae, growth.error_ratio) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("forecast", "actual", "training_mae", "message"),
    [
        (_forecast(), _actual(), 0.0, "positive number"),
        (_forecast(), _actual(), float("nan"), "positive number"),
        (_forecast().head(0), _actual(), 1.0, "no rows"),
        (pd.concat([_forecast(), _forecast().head(1)]), _actual(), 1.0, "more than one row"),
        (
            _forecast(),
            _actual().assign(hour_start=lambda f: f["hour_start"] + pd.Timedelta(days=1)),
            1.0,
            "same day",
        ),
        (_forecast().assign(busyness_forecast=np.nan), _actual(), 1.0, "missing or infinite"),
        (_forecast(), _actual().drop(columns="orders"), 1.0, r"lacks columns \['orders'\]"),
    ],
)
def test_error_growth_refuses_inconsistent_inputs(forecast, actual, training_mae, message):
    with pytest.raises(ValueError, match=message):
        forecast_error_growth(forecast, actual, training_mae)


# ---------------------------------------------------------------------------------------------
# Retraining decision

POLICY = DriftThresholds(max_drift_share=0.5, max_error_ratio=1.5)


@pytest.mark.parametrize(
    ("drift_share", "error_ratio", "retrain", "reason"),
    [
        (0.5, None, False, "no forecast error"),
        (0.5001, None, True, "50% of the features drifted (limit 50%)"),
        (0.0, 1.5, False, "1.50x the test MAE"),
        (0.0, 1.5001, True, "forecast MAE is 1.50x"),
        (1.0, 3.0, True, "; forecast MAE is 3.00x"),
    ],
)
def test_needs_retraining_at_its_boundaries(drift_share, error_ratio, retrain, reason):
    decision, why = needs_retraining(drift_share, error_ratio, POLICY)
    assert decision is retrain
    assert reason in why


@pytest.mark.parametrize(("drift_share", "error_ratio"), [(1.2, None), (-0.1, 1.0), (0.1, -1.0)])
def test_needs_retraining_refuses_impossible_values(drift_share, error_ratio):
    with pytest.raises(ValueError):
        needs_retraining(drift_share, error_ratio, POLICY)


@pytest.mark.parametrize(
    "kwargs", [{"max_drift_share": 1.5}, {"max_drift_share": float("nan")}, {"max_error_ratio": 0}]
)
def test_thresholds_are_validated(kwargs):
    with pytest.raises(ValueError):
        DriftThresholds(**kwargs)
