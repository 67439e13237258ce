"""Next-day forecast rows are the day-ahead training features of the next day."""

import pandas as pd
import pytest

from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.features import TARGETS, busyness_features
from geo_busyness.core.forecast import FORECAST_COLUMN, forecast_features, forecast_table, next_day
from geo_busyness.simulate import SimulationConfig, simulated_city

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def simulated():
    return simulated_city(SimulationConfig(days=10, pings_per_day=3_000, dirty_files=False))


def test_next_day_crosses_month_and_year_ends():
    assert next_day("2026-10-31") == "2026-11-01"
    assert next_day("2026-12-31") == "2027-01-01"


def test_forecast_rows_equal_the_training_features_of_the_next_day(simulated):
    days = sorted(simulated.hourly)
    data_day, target_day = days[-2], days[-1]
    rows = forecast_features(
        simulated.hourly, data_day, simulated.restaurant_clusters, DEFAULT_CITY
    )
    training = busyness_features(
        simulated.hourly, target_day, simulated.restaurant_clusters, DEFAULT_CITY
    )
    assert not set(TARGETS) & set(rows.columns)
    pd.testing.assert_frame_equal(rows, training.drop(columns=list(TARGETS)))
    assert (rows["hour_start"].dt.strftime("%Y-%m-%d") == target_day).all()


def test_days_after_the_data_day_are_ignored(simulated):
    days = sorted(simulated.hourly)
    data_day = days[-3]
    upto = {day: frame for day, frame in simulated.hourly.items() if day <= data_day}
    clusters = simulated.restaurant_clusters
    everything = forecast_features(simulated.hourly, data_day, clusters, DEFAULT_CITY)
    pd.testing.assert_frame_equal(
        everything, forecast_features(upto, data_day, clusters, DEFAULT_CITY)
    )


def test_forecast_table_adds_prediction_and_version(simulated):
    days = sorted(simulated.hourly)
    rows = forecast_features(
        simulated.hourly, days[-1], simulated.restaurant_clusters, DEFAULT_CITY
    )
    table = forecast_table(rows, range(len(rows)), "7")
    assert table[FORECAST_COLUMN].tolist() == [float(i) for i in range(len(rows))]
    assert set(table["model_version"]) == {"7"}
    assert len(rows) > 0 and table["hour_start"].min() == pd.Timestamp(next_day(days[-1]), tz="UTC")
