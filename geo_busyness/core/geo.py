"""Distances and H3 indexing, vectorized.

H3 cells come from h3ronpy's vectorized binding (checked against ``h3`` in the tests); they
are handled as uint64 internally and as the usual hex strings at the edges.
"""

from __future__ import annotations

import h3
import h3ronpy
import numpy as np
import pyarrow as pa
from h3ronpy.vector import coordinates_to_cells

# Earth radius used by the original proof of concept; kept so distances stay comparable.
EARTH_RADIUS_KM = 6372.8


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between arrays (or scalars) of degrees."""
    lat1, lon1, lat2, lon2 = (
        np.radians(np.asarray(v, dtype="float64")) for v in (lat1, lon1, lat2, lon2)
    )
    with np.errstate(invalid="ignore"):  # NaN in, NaN out: callers validate coordinates
        a = (
            np.sin((lat2 - lat1) / 2) ** 2
            + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
        )
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def euclidean_deg(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Plain Euclidean distance in degrees, the PoC's second distance feature."""
    return np.hypot(np.asarray(lat1, "float64") - lat2, np.asarray(lon1, "float64") - lon2)


def cells_for(lat, lon, resolution: int) -> np.ndarray:
    """H3 cell (uint64) of each coordinate; inputs must be finite and in range."""
    lat = np.ascontiguousarray(lat, dtype="float64")
    lon = np.ascontiguousarray(lon, dtype="float64")
    if lat.size == 0:
        return np.zeros(0, dtype="uint64")
    return np.asarray(pa.array(coordinates_to_cells(lat, lon, resolution)), dtype="uint64")


def cells_to_strings(cells: np.ndarray) -> np.ndarray:
    """uint64 cells to their hex-string form (object array)."""
    if len(cells) == 0:
        return np.zeros(0, dtype=object)
    return np.asarray(
        pa.array(h3ronpy.cells_to_string(pa.array(np.asarray(cells, "uint64")))), dtype=object
    )


def strings_to_cells(cells) -> np.ndarray:
    """Hex-string cells to uint64; raises ValueError on a string that is not an H3 cell."""
    values = pa.array(np.asarray(cells, dtype=object), type=pa.string())
    parsed = np.asarray(
        pa.array(h3ronpy.cells_parse(values, set_failing_to_invalid=True)).fill_null(0), "uint64"
    )
    if (parsed == 0).any():
        bad = np.asarray(cells, dtype=object)[parsed == 0][:5].tolist()
        raise ValueError(f"not H3 cells: {bad}")
    return parsed


def cell_centers(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude of the centre of each uint64 cell."""
    from h3ronpy.vector import cells_to_coordinates

    coords = pa.record_batch(cells_to_coordinates(pa.array(np.asarray(cells, "uint64"))))
    return coords.column("lat").to_numpy(), coords.column("lng").to_numpy()


def neighbour_pairs(cells: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with cells[j] in the k-ring of cells[i], i != j, both in ``cells``."""
    cells = np.asarray(cells, "uint64")
    if len(cells) == 0:
        return np.zeros(0, "int64"), np.zeros(0, "int64")
    disks = pa.array(h3ronpy.grid_disk(pa.array(cells), k, flatten=False))
    offsets = np.asarray(disks.offsets)
    members = np.asarray(disks.values, "uint64")
    owner = np.repeat(np.arange(len(cells)), np.diff(offsets))
    order = np.argsort(cells)
    position = np.searchsorted(cells, members, sorter=order)
    position = np.clip(position, 0, len(cells) - 1)
    found = cells[order[position]] == members
    j = order[position]
    keep = found & (j != owner)
    return owner[keep], j[keep]


def cell_boundary(cell: str) -> list[tuple[float, float]]:
    """(lat, lon) vertices of one cell, for drawing maps."""
    return list(h3.cell_to_boundary(cell))
