"""The city a deployment serves: its centre, service area, time zone and H3 resolution.

Everything city-specific is configuration, so the same code serves any city.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    """Geography and calendar of one service area.

    ``service_radius_km`` bounds where a ping is plausible: points further than
    ``implausible_distance_km`` from the centre are quarantined as implausible.
    """

    name: str = "Regina, SK"
    center_lat: float = 50.4452
    center_lon: float = -104.6189
    service_radius_km: float = 12.0
    implausible_distance_km: float = 50.0
    timezone: str = "America/Regina"
    h3_resolution: int = 7
    n_restaurant_clusters: int = 5

    def __post_init__(self) -> None:
        if not -90 <= self.center_lat <= 90 or not -180 <= self.center_lon <= 180:
            raise ValueError(
                f"city centre ({self.center_lat}, {self.center_lon}) is not a coordinate"
            )
        if not 0 <= self.h3_resolution <= 15:
            raise ValueError(f"h3_resolution must be 0..15, got {self.h3_resolution}")
        if self.implausible_distance_km < self.service_radius_km:
            raise ValueError("implausible_distance_km must be at least service_radius_km")


DEFAULT_CITY = City()
