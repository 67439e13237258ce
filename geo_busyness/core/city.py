"""A served city: its centre, service area, time zone, H3 resolution and first day.

Everything city-specific is configuration (the catalog, ``geo_busyness/core/catalog.py``), so
the same code serves any city.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass

CITY_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class City:
    """Geography and calendar of one service area.

    A ping belongs to the city when it lies inside ``service_area`` (a polygon of
    ``(lat, lon)`` vertices) or, without one, within ``service_radius_km`` of the centre.
    Points further than ``implausible_distance_km`` from the centre cannot come from a courier
    of this city (a swapped sign, null island): they are quarantined as implausible.
    ``id`` is the slug used in landing folders (``raw/city=<id>/``), partition paths and
    asset keys (as :attr:`key`, with ``_`` for ``-``).
    """

    name: str = "Regina, SK"
    center_lat: float = 50.4452
    center_lon: float = -104.6189
    service_radius_km: float = 12.0
    implausible_distance_km: float = 50.0
    timezone: str = "America/Regina"
    h3_resolution: int = 7
    n_restaurant_clusters: int = 5
    id: str = "regina"
    first_day: dt.date | None = None
    service_area: tuple[tuple[float, float], ...] | None = None
    first_landed_day: dt.date | None = None
    """Not from the catalog: the oldest day folder found for the city in the landing zone when
    the definitions were built, its first day when the catalog gives none."""

    def __post_init__(self) -> None:
        if not CITY_ID.match(self.id):
            raise ValueError(
                f"city id must be a lowercase slug (letters, digits, single hyphens), got "
                f"{self.id!r}"
            )
        if not -90 <= self.center_lat <= 90 or not -180 <= self.center_lon <= 180:
            raise ValueError(
                f"city centre ({self.center_lat}, {self.center_lon}) is not a coordinate"
            )
        if not 0 <= self.h3_resolution <= 15:
            raise ValueError(f"h3_resolution must be 0..15, got {self.h3_resolution}")
        if self.implausible_distance_km < self.service_radius_km:
            raise ValueError("implausible_distance_km must be at least service_radius_km")
        if self.service_area is not None and len(self.service_area) < 3:
            raise ValueError("service_area needs at least 3 vertices")

    def as_record(self) -> dict:
        """Every field as JSON values (shown on the city's raw asset, read back by the runner)."""
        record = dataclasses.asdict(self)
        for name in ("first_day", "first_landed_day"):
            record[name] = record[name].isoformat() if record[name] else None
        if self.service_area:
            record["service_area"] = [list(vertex) for vertex in self.service_area]
        return record

    @classmethod
    def from_record(cls, record: dict) -> City:
        values = dict(record)
        for name in ("first_day", "first_landed_day"):
            values[name] = dt.date.fromisoformat(values[name]) if values.get(name) else None
        if values.get("service_area"):
            values["service_area"] = tuple(tuple(vertex) for vertex in values["service_area"])
        return cls(**values)

    @property
    def key(self) -> str:
        return key_of_city_id(self.id)


def key_of_city_id(city_id: str) -> str:
    """A city id as a Dagster name (asset key prefix, group, job): hyphens become ``_``."""
    return city_id.replace("-", "_")


DEFAULT_CITY = City()
