import h3
import numpy as np
import pytest

from geo_busyness.core import geo

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((51.5007, -0.1246), (40.6892, -74.0445), 5574.8),  # Big Ben to the Statue of Liberty
        ((50.4452, -104.6189), (50.4452, -104.6189), 0.0),
        ((0.0, 0.0), (0.0, 180.0), np.pi * geo.EARTH_RADIUS_KM),  # half the equator
        ((90.0, 0.0), (-90.0, 0.0), np.pi * geo.EARTH_RADIUS_KM),  # pole to pole
    ],
)
def test_haversine_matches_known_distances(a, b, km):
    assert geo.haversine_km(*a, *b) == pytest.approx(km, rel=2e-3, abs=1e-9)


def test_haversine_is_vectorized_and_symmetric():
    rng = np.random.default_rng(1)
    lat1, lat2 = rng.uniform(-80, 80, (2, 1000))
    lon1, lon2 = rng.uniform(-180, 180, (2, 1000))
    assert np.allclose(
        geo.haversine_km(lat1, lon1, lat2, lon2), geo.haversine_km(lat2, lon2, lat1, lon1)
    )


def test_euclidean_distance_in_degrees():
    assert geo.euclidean_deg(0.0, 0.0, 3.0, 4.0) == pytest.approx(5.0)


@pytest.mark.parametrize("resolution", [5, 7, 9])
def test_cells_agree_with_h3(resolution):
    rng = np.random.default_rng(resolution)
    lat = rng.uniform(-85, 85, 5000)
    lon = rng.uniform(-180, 180, 5000)
    cells = geo.cells_for(lat, lon, resolution)
    expected = [h3.latlng_to_cell(a, b, resolution) for a, b in zip(lat, lon, strict=True)]
    assert geo.cells_to_strings(cells).tolist() == expected
    assert geo.strings_to_cells(np.array(expected, dtype=object)).tolist() == cells.tolist()


def test_strings_to_cells_names_bad_values():
    with pytest.raises(ValueError, match="not-a-cell"):
        geo.strings_to_cells(np.array(["8727a0335ffffff", "not-a-cell"], dtype=object))


def test_neighbour_pairs_match_h3_grid_disk():
    centre = h3.latlng_to_cell(50.4452, -104.6189, 7)
    disk = sorted(h3.grid_disk(centre, 2))
    cells = geo.strings_to_cells(np.array(disk, dtype=object))
    i, j = geo.neighbour_pairs(cells, k=1)
    got = {(disk[a], disk[b]) for a, b in zip(i, j, strict=True)}
    expected = {(a, b) for a in disk for b in h3.grid_disk(a, 1) if b != a and b in disk}
    assert got == expected


def test_cell_centres_agree_with_h3():
    cells = geo.cells_for([50.45, 10.0], [-104.6, 20.0], 7)
    lat, lon = geo.cell_centers(cells)
    for cell, a, b in zip(geo.cells_to_strings(cells), lat, lon, strict=True):
        assert (a, b) == pytest.approx(h3.cell_to_latlng(cell))
