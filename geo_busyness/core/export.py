"""Exports of every city (``raw/dt=D/``): which city each row belongs to, and what becomes of
the rows that belong to none.

A row goes to the city whose service area holds its courier position (the nearest centre when
areas overlap). A row in no area cannot be anyone's clean data: it is quarantined once, for the
day, in ``unrouted_pings``, with the first contract rule it breaks as judged against the nearest
city (a swapped sign is ``implausible_location``, an unreadable number ``unparseable_number``)
or, when it breaks none, ``outside_service_area``. So every row of such a file ends in exactly
one city's raw pings or in the unrouted quarantine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from geo_busyness.core.city import City
from geo_busyness.core.geo import haversine_km
from geo_busyness.core.routing import route_to_cities
from geo_busyness.core.schema import (
    QUARANTINE_COLUMNS,
    QuarantineReason,
    courier_locations,
    validate_pings,
)


def route_export(raw: pd.DataFrame, cities: Sequence[City]) -> np.ndarray:
    """Index into ``cities`` of every row's city; negative when it belongs to none."""
    lat, lon = courier_locations(raw)
    return np.asarray(route_to_cities(cities, lat, lon), dtype=np.int64)


def rows_of_city(raw: pd.DataFrame, cities: Sequence[City], city: City) -> pd.DataFrame:
    """The rows of an export of every city that belong to ``city``."""
    index = [c.id for c in cities].index(city.id)
    return raw.loc[route_export(raw, cities) == index].reset_index(drop=True)


def _nearest_city(cities: Sequence[City], lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Index of the nearest centre per point (0 where the position is unknown)."""
    distances = np.stack(
        [haversine_km(lat, lon, city.center_lat, city.center_lon) for city in cities]
    )
    distances = np.where(np.isfinite(distances), distances, np.inf)
    return distances.argmin(axis=0)


def unrouted_quarantine(
    raw: pd.DataFrame, cities: Sequence[City], partition_day: str | None = None
) -> pd.DataFrame:
    """The rows of an export of every city that no city takes, as quarantine records."""
    if not cities:
        raise ValueError("the catalog has no city to route rows to")
    unrouted = raw.loc[route_export(raw, cities) < 0].reset_index(drop=True)
    lat, lon = courier_locations(unrouted)
    nearest = _nearest_city(cities, lat, lon)
    parts = []
    for index, city in enumerate(cities):
        rows = unrouted.loc[nearest == index].reset_index(drop=True)
        if rows.empty:
            continue
        result = validate_pings(rows, city, partition_day=partition_day)
        parts.append(result.quarantined)
        if len(result.clean):
            # validate_pings keeps no source columns on clean rows: take them from the input.
            passed = _not_quarantined(rows, result.quarantined)
            outside = rows.loc[passed]
            km = haversine_km(
                lat[nearest == index][passed],
                lon[nearest == index][passed],
                city.center_lat,
                city.center_lon,
            )
            parts.append(
                outside.assign(
                    reason=QuarantineReason.OUTSIDE_SERVICE_AREA.value,
                    detail=np.char.add(
                        "courier ",
                        np.char.add(
                            np.round(km, 1).astype(str),
                            f" km from {city.name}, outside every service area",
                        ),
                    ),
                )
            )
    frame = pd.concat(parts, ignore_index=True) if parts else _empty(raw)
    return frame[list(QUARANTINE_COLUMNS)].sort_values(
        ["source_file", "source_row"], kind="stable", ignore_index=True
    )


def _not_quarantined(rows: pd.DataFrame, quarantined: pd.DataFrame) -> np.ndarray:
    """Rows of ``rows`` (by source file and row) absent from ``quarantined``."""
    keys = pd.MultiIndex.from_frame(rows[["source_file", "source_row"]])
    refused = pd.MultiIndex.from_frame(quarantined[["source_file", "source_row"]])
    return ~keys.isin(refused)


def _empty(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.iloc[:0].assign(reason=pd.Series(dtype=object), detail=pd.Series(dtype=object))
