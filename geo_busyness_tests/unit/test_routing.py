import numpy as np
import pytest

from geo_busyness.core.city import City
from geo_busyness.core.geo import haversine_km
from geo_busyness.core.routing import (
    IMPLAUSIBLE,
    OUTSIDE_SERVICE_AREA,
    in_service_area,
    nearest_city_km,
    route_to_cities,
)

pytestmark = pytest.mark.unit

REGINA = City()
# A square around Jersey City and an L-shaped (concave) area, as (lat, lon) vertices.
JERSEY = City(
    name="Jersey City",
    id="jersey-city",
    center_lat=40.72,
    center_lon=-74.05,
    service_radius_km=6.0,
    timezone="America/New_York",
    service_area=((40.68, -74.10), (40.68, -74.00), (40.76, -74.00), (40.76, -74.10)),
)
ELL = City(
    name="Ell",
    id="ell",
    center_lat=10.0,
    center_lon=10.0,
    service_radius_km=40.0,
    implausible_distance_km=200.0,
    timezone="UTC",
    service_area=(
        (10.0, 10.0),
        (10.0, 10.4),
        (10.2, 10.4),
        (10.2, 10.2),
        (10.4, 10.2),
        (10.4, 10.0),
    ),
)


def test_radius_area_is_a_distance_from_the_centre():
    lat = np.array([50.4452, 50.4452 + 0.1, 50.4452 + 0.11, np.nan, 50.4452])
    lon = np.array([-104.6189, -104.6189, -104.6189, -104.6189, np.nan])
    # 0.1 degree of latitude is ~11.1 km, 0.11 is ~12.2 km: inside, outside 12 km.
    assert in_service_area(REGINA, lat, lon).tolist() == [True, True, False, False, False]


def test_polygon_area_ignores_the_radius():
    lat = np.array([40.72, 40.685, 40.75, 40.77, 40.72, 40.72, np.nan])
    lon = np.array([-74.05, -74.099, -74.001, -74.05, -73.99, -74.11, -74.05])
    assert in_service_area(JERSEY, lat, lon).tolist() == [True, True, True] + [False] * 4
    # The square's corner is ~5.5 km from the centre but a point 5 km north is outside it.
    north = 40.72 + 5.0 / 111.2
    assert haversine_km(40.72, -74.05, north, -74.05) < JERSEY.service_radius_km
    assert not in_service_area(JERSEY, [north], [-74.05])[0]


def test_concave_polygon_excludes_its_notch():
    lat = np.array([10.1, 10.3, 10.1, 10.3, 10.19, 10.21])
    lon = np.array([10.1, 10.1, 10.3, 10.3, 10.39, 10.39])
    assert in_service_area(ELL, lat, lon).tolist() == [True, True, True, False, True, False]


def test_polygon_test_matches_a_reference_on_random_points():
    rng = np.random.default_rng(7)
    lat = rng.uniform(9.9, 10.5, 20_000)
    lon = rng.uniform(9.9, 10.5, 20_000)
    expected = ((lat > 10.0) & (lat < 10.4) & (lon > 10.0) & (lon < 10.2)) | (
        (lat > 10.0) & (lat < 10.2) & (lon > 10.0) & (lon < 10.4)
    )
    assert (in_service_area(ELL, lat, lon) == expected).all()


def test_shapes_are_kept_and_scalars_work():
    grid = np.full((2, 3), 50.4452)
    assert in_service_area(REGINA, grid, np.full((2, 3), -104.6189)).shape == (2, 3)
    assert in_service_area(JERSEY, np.full((2, 3), 40.72), np.full((2, 3), -74.05)).all()
    assert bool(in_service_area(JERSEY, 40.72, -74.05))
    assert route_to_cities([REGINA], 50.4452, -104.6189).tolist() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        route_to_cities([REGINA], [1.0, 2.0], [1.0])


def test_routing_sends_each_point_to_its_city_or_flags_it():
    cities = [REGINA, JERSEY]
    lat = np.array([50.45, 40.72, 50.8, 40.90, -50.45, 50.45, 0.0, np.nan, 40.72])
    lon = np.array([-104.62, -74.05, -104.62, -74.05, -104.62, 104.62, 0.0, -74.05, np.nan])
    assert route_to_cities(cities, lat, lon).tolist() == [
        0,  # Regina
        1,  # Jersey City
        OUTSIDE_SERVICE_AREA,  # ~40 km north of Regina: a courier outside the area
        OUTSIDE_SERVICE_AREA,  # ~20 km north of Jersey City
        IMPLAUSIBLE,  # swapped latitude sign
        IMPLAUSIBLE,  # swapped longitude sign
        IMPLAUSIBLE,  # null island
        IMPLAUSIBLE,  # no coordinates
        IMPLAUSIBLE,
    ]


def test_overlapping_areas_go_to_the_nearest_centre():
    west = City(id="west", center_lat=50.0, center_lon=-105.0, timezone="UTC")
    east = City(id="east", center_lat=50.0, center_lon=-104.8, timezone="UTC")  # ~14 km apart
    lat = np.array([50.0, 50.0, 50.0, 50.0])
    lon = np.array([-105.0, -104.91, -104.89, -104.8])
    assert route_to_cities([west, east], lat, lon).tolist() == [0, 0, 1, 1]
    assert route_to_cities([east, west], lat, lon).tolist() == [1, 1, 0, 0]
    # Same centre: the first city listed wins, deterministically.
    twin = City(id="twin", timezone="UTC")
    assert route_to_cities([REGINA, twin], [50.4452], [-104.6189]).tolist() == [0]
    assert route_to_cities([twin, REGINA], [50.4452], [-104.6189]).tolist() == [0]


def test_polygon_and_radius_cities_overlap_by_nearest_centre():
    around = City(id="around", center_lat=40.70, center_lon=-74.05, timezone="UTC")  # 12 km
    lat = np.array([40.75, 40.70, 40.60])
    lon = np.array([-74.05, -74.05, -74.05])
    # 40.75 is in both: Jersey City's centre (3.3 km) beats around's (5.6 km).
    assert route_to_cities([around, JERSEY], lat, lon).tolist() == [1, 0, 0]


def test_implausible_distance_is_per_city():
    far = City(id="far", implausible_distance_km=500.0, timezone="UTC")
    lat, lon = np.array([50.4452 + 3.0]), np.array([-104.6189])  # ~333 km north
    assert route_to_cities([REGINA], lat, lon).tolist() == [IMPLAUSIBLE]
    assert route_to_cities([far], lat, lon).tolist() == [OUTSIDE_SERVICE_AREA]
    assert route_to_cities([REGINA, JERSEY], lat, lon).tolist() == [IMPLAUSIBLE]


def test_routing_needs_a_city():
    with pytest.raises(ValueError, match="at least one city"):
        route_to_cities([], [1.0], [1.0])
    with pytest.raises(ValueError, match="at least one city"):
        nearest_city_km([], [1.0], [1.0])


def test_a_million_points_route_like_the_per_city_tests():
    rng = np.random.default_rng(3)
    n = 1_000_000
    lat = np.concatenate([rng.normal(50.45, 0.3, n // 2), rng.normal(40.72, 0.05, n // 2)])
    lon = np.concatenate([rng.normal(-104.62, 0.3, n // 2), rng.normal(-74.05, 0.05, n // 2)])
    lat[::1000] = np.nan
    route = route_to_cities([REGINA, JERSEY], lat, lon)
    assert route.shape == (n,)
    assert (route[::1000] == IMPLAUSIBLE).all()
    in_regina = in_service_area(REGINA, lat, lon)
    in_jersey = in_service_area(JERSEY, lat, lon)
    assert ((route == 0) == in_regina).all()
    assert ((route == 1) == in_jersey).all()
    near = (haversine_km(lat, lon, REGINA.center_lat, REGINA.center_lon) <= 50) | (
        haversine_km(lat, lon, JERSEY.center_lat, JERSEY.center_lon) <= 50
    )
    outside = near & ~in_regina & ~in_jersey
    assert ((route == OUTSIDE_SERVICE_AREA) == outside).all()
    assert ((route == IMPLAUSIBLE) == ~near).all()
    assert min(in_regina.sum(), in_jersey.sum(), outside.sum(), (~near).sum()) > 1000


def test_nearest_city_km_measures_the_distance_outside_the_area():
    cities = [REGINA, JERSEY]
    lat = np.array([50.4452 + 0.2, 50.45, 40.72, 40.80, 40.72, np.nan])
    lon = np.array([-104.6189, -104.62, -74.05, -74.05, -73.95, 0.0])
    index, km = nearest_city_km(cities, lat, lon)
    assert index.tolist() == [0, 0, 1, 1, 1, -1]
    expected_regina = float(haversine_km(50.4452, -104.6189, 50.6452, -104.6189)) - 12.0
    assert km[0] == pytest.approx(expected_regina, abs=0.01)
    assert km[1] == 0.0
    assert km[2] == 0.0
    assert km[3] == pytest.approx(0.04 * 111.2, rel=0.01)  # 0.04 degree north of the square
    assert km[4] == pytest.approx(0.05 * 111.2 * np.cos(np.radians(40.72)), rel=0.01)
    assert np.isnan(km[5])
