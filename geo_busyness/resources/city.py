"""The served city as a Dagster resource, editable in the Launchpad."""

from __future__ import annotations

import dagster as dg

from geo_busyness.core.city import DEFAULT_CITY, City


class CityResource(dg.ConfigurableResource):
    """Centre, service area, time zone and H3 resolution of the city (defaults: Regina, SK)."""

    name: str = DEFAULT_CITY.name
    center_lat: float = DEFAULT_CITY.center_lat
    center_lon: float = DEFAULT_CITY.center_lon
    service_radius_km: float = DEFAULT_CITY.service_radius_km
    implausible_distance_km: float = DEFAULT_CITY.implausible_distance_km
    timezone: str = DEFAULT_CITY.timezone
    h3_resolution: int = DEFAULT_CITY.h3_resolution
    n_restaurant_clusters: int = DEFAULT_CITY.n_restaurant_clusters

    def to_city(self) -> City:
        return City(
            name=self.name,
            center_lat=self.center_lat,
            center_lon=self.center_lon,
            service_radius_km=self.service_radius_km,
            implausible_distance_km=self.implausible_distance_km,
            timezone=self.timezone,
            h3_resolution=self.h3_resolution,
            n_restaurant_clusters=self.n_restaurant_clusters,
        )
