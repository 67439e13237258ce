"""Which city a coordinate belongs to, vectorized over millions of pings.

One landing feed may carry pings of several cities; each ping is routed to the city whose
service area contains it. A ping in no area but near a city is a real courier outside the
service area (quarantined as such); one far from every city is a broken coordinate.
Polygons are tested in plain lon/lat (fine for city-sized areas, not across the antimeridian).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geo_busyness.core.city import City
from geo_busyness.core.geo import EARTH_RADIUS_KM, haversine_km

OUTSIDE_SERVICE_AREA = -1
"""Route of a ping in no service area but plausibly near a city."""
IMPLAUSIBLE = -2
"""Route of a ping further than every city's implausible distance, or without coordinates."""


def _coords(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(lat, dtype="float64")
    lon = np.asarray(lon, dtype="float64")
    if lat.shape != lon.shape:
        raise ValueError(f"lat and lon differ in shape: {lat.shape} vs {lon.shape}")
    return lat, lon


def _in_polygon(
    vertices: tuple[tuple[float, float], ...], lat: np.ndarray, lon: np.ndarray
) -> np.ndarray:
    """Even-odd ray casting: a loop over edges, vectorized over the points."""
    ring = np.asarray(vertices, dtype="float64")
    v_lat, v_lon = ring[:, 0], ring[:, 1]
    inside = np.zeros(lat.shape, dtype=bool)
    # Only points inside the bounding box can be inside; NaN fails these comparisons.
    box = (lat >= v_lat.min()) & (lat <= v_lat.max()) & (lon >= v_lon.min()) & (lon <= v_lon.max())
    candidates = np.flatnonzero(box)
    if candidates.size == 0:
        return inside
    p_lat, p_lon = lat.ravel()[candidates], lon.ravel()[candidates]
    crossings = np.zeros(candidates.size, dtype=bool)
    for i in range(len(ring)):
        lat1, lon1 = v_lat[i - 1], v_lon[i - 1]
        lat2, lon2 = v_lat[i], v_lon[i]
        if lat1 == lat2:
            continue  # a horizontal edge never straddles the ray
        straddles = (lat1 > p_lat) != (lat2 > p_lat)
        crossing_lon = lon1 + (p_lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
        crossings ^= straddles & (p_lon < crossing_lon)
    inside.ravel()[candidates] = crossings
    return inside


def _inside(city: City, lat: np.ndarray, lon: np.ndarray, km_to_centre: np.ndarray) -> np.ndarray:
    if city.service_area is not None:
        return _in_polygon(city.service_area, lat, lon)
    return km_to_centre <= city.service_radius_km  # NaN compares False


def in_service_area(city: City, lat, lon) -> np.ndarray:
    """Whether each point lies in the city's service area (polygon, else radius); NaN: False."""
    lat, lon = _coords(lat, lon)
    if city.service_area is not None:
        return _in_polygon(city.service_area, lat, lon)
    return haversine_km(lat, lon, city.center_lat, city.center_lon) <= city.service_radius_km


def route_to_cities(cities: Sequence[City], lat, lon) -> np.ndarray:
    """Index into ``cities`` of each point's city, else ``OUTSIDE_SERVICE_AREA``/``IMPLAUSIBLE``.

    Overlapping areas go to the nearest centre (ties to the first city), so each ping is
    counted once. A loop over cities keeps memory at a few arrays of the points' size.
    """
    if not cities:
        raise ValueError("route_to_cities needs at least one city")
    lat, lon = _coords(lat, lon)
    route = np.full(lat.shape, IMPLAUSIBLE, dtype="int64")
    best_km = np.full(lat.shape, np.inf)
    plausible = np.zeros(lat.shape, dtype=bool)
    for index, city in enumerate(cities):
        km = haversine_km(lat, lon, city.center_lat, city.center_lon)
        plausible |= km <= city.implausible_distance_km
        better = _inside(city, lat, lon, km) & (km < best_km)
        route[better] = index
        best_km[better] = km[better]
    route[(route == IMPLAUSIBLE) & plausible] = OUTSIDE_SERVICE_AREA
    return route


def _km_outside_polygon(city: City, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Distance to the polygon's boundary on a local flat projection; 0 inside."""
    assert city.service_area is not None
    scale = np.radians(1.0) * EARTH_RADIUS_KM
    cos0 = np.cos(np.radians(city.center_lat))

    def project(p_lat, p_lon):
        d_lon = (np.asarray(p_lon, "float64") - city.center_lon + 180.0) % 360.0 - 180.0
        return d_lon * cos0 * scale, (np.asarray(p_lat, "float64") - city.center_lat) * scale

    ring = np.asarray(city.service_area, dtype="float64")
    vx, vy = project(ring[:, 0], ring[:, 1])
    px, py = project(lat, lon)
    nearest = np.full(lat.shape, np.inf)
    for i in range(len(ring)):
        ax, ay, bx, by = vx[i - 1], vy[i - 1], vx[i], vy[i]
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0) if length2 else 0.0
        nearest = np.fmin(nearest, np.hypot(px - (ax + t * dx), py - (ay + t * dy)))
    nearest[_in_polygon(city.service_area, lat, lon)] = 0.0
    nearest[~(np.isfinite(lat) & np.isfinite(lon))] = np.nan
    return nearest


def nearest_city_km(cities: Sequence[City], lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """For messages: the city whose service area is nearest, and how many km outside it
    each point is (0 inside); index -1 and NaN km for points without coordinates."""
    if not cities:
        raise ValueError("nearest_city_km needs at least one city")
    lat, lon = _coords(lat, lon)
    index = np.full(lat.shape, -1, dtype="int64")
    best = np.full(lat.shape, np.inf)
    for i, city in enumerate(cities):
        if city.service_area is not None:
            km = _km_outside_polygon(city, lat, lon)
        else:
            km = haversine_km(lat, lon, city.center_lat, city.center_lon)
            km = np.maximum(km - city.service_radius_km, 0.0)
        better = km < best  # NaN compares False
        index[better] = i
        best[better] = km[better]
    best[index == -1] = np.nan
    return index, best
