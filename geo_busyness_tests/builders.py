"""Feature partitions of a simulated city built with the core functions only (no Dagster),
for tests that need realistic ``busyness_features`` quickly."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from geo_busyness.core.features import (
    busyness_features,
    cluster_restaurants,
    hex_hourly_busyness,
    restaurant_sightings,
    restaurants_from_sightings,
)
from geo_busyness.core.schema import read_raw_file, validate_pings
from geo_busyness.simulate import SimulationConfig, simulate_day


@dataclass(frozen=True)
class SimulatedCity:
    """What the data assets would hold after materializing the simulated days."""

    hourly: dict[str, pd.DataFrame]
    restaurant_clusters: pd.DataFrame
    features: dict[str, pd.DataFrame]


def simulated_city(config: SimulationConfig) -> SimulatedCity:
    """hex_hourly_busyness per day, restaurant clusters, and ``busyness_features`` for every
    simulated day but the first, which only serves as history (as it would for the first
    materialized day)."""
    city = config.city
    days = [config.start_date + dt.timedelta(days=k) for k in range(config.days)]
    hourly, sightings = {}, {}
    for day in days:
        raw = pd.concat(
            [read_raw_file(name, content) for name, content in simulate_day(config, day).items()],
            ignore_index=True,
        )
        clean = validate_pings(raw, city, day.isoformat()).clean
        hourly[day.isoformat()] = hex_hourly_busyness(clean, city.h3_resolution)
        sightings[day.isoformat()] = restaurant_sightings(clean)
    clusters = cluster_restaurants(
        restaurants_from_sightings(sightings, city.h3_resolution), city.n_restaurant_clusters
    )
    features = {
        day.isoformat(): busyness_features(hourly, day.isoformat(), clusters, city)
        for day in days[1:]
    }
    return SimulatedCity(hourly=hourly, restaurant_clusters=clusters, features=features)
