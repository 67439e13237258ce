"""Next-day forecast rows: the same day-ahead features as training, without the targets."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pandas as pd

from geo_busyness.core.city import City
from geo_busyness.core.features import TARGETS, busyness_features

FORECAST_COLUMN = "busyness_forecast"


def next_day(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


def forecast_features(
    hourly_by_day: dict[str, pd.DataFrame],
    data_day: str,
    restaurant_clusters: pd.DataFrame,
    city: City,
    landed_until: Mapping[str, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """Feature rows for every active hexagon and hour of the day after ``data_day``, from the
    hex_hourly_busyness days up to and including ``data_day`` (days after it are ignored, so a
    re-run later gives the same rows)."""
    known = {day: frame for day, frame in hourly_by_day.items() if day <= data_day}
    features = busyness_features(known, next_day(data_day), restaurant_clusters, city, landed_until)
    return features.drop(columns=list(TARGETS))


def forecast_table(
    features: pd.DataFrame, predictions: np.ndarray, model_version: str
) -> pd.DataFrame:
    """The features with the predicted busyness and the model version that made it."""
    return features.assign(
        **{
            FORECAST_COLUMN: np.asarray(predictions, dtype="float64"),
            "model_version": model_version,
        }
    )
