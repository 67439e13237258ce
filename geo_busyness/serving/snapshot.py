"""Whole-batch (H3 cell, UTC hour) → feature-row lookup over a bundle's feature snapshot.

The snapshot's rows are kept sorted by (cell, hour) and each row gets one int64 key,
``rank of its cell among the snapshot's cells * hours in the horizon + hour offset``, so a
batch of any size is resolved with two ``np.searchsorted`` calls and no Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from geo_busyness.core.features import HOUR_NS
from geo_busyness.core.geo import cells_to_strings

MISSING_ROW = -1


@dataclass(frozen=True, eq=False)
class SnapshotIndex:
    """The feature matrix of a snapshot with what is needed to find and describe its rows.

    ``features`` is float32 in C order, the input XGBoost's ``inplace_predict`` takes without a
    copy; ``cell_strings``/``hour_strings`` are the response's spelling of each row's key,
    formatted once at load rather than on every request.
    """

    cells: np.ndarray  # uint64, sorted, unique: the snapshot's active hexagons
    horizon_start_ns: int
    n_hours: int
    keys: np.ndarray  # int64, sorted, one per row of ``features``
    features: np.ndarray  # float32 (rows, features)
    cell_strings: pa.StringArray  # per row
    hour_strings: pa.StringArray  # per row, ISO-8601 with +00:00

    @classmethod
    def build(
        cls,
        cells: np.ndarray,
        hour_ns: np.ndarray,
        features: np.ndarray,
        horizon_start_ns: int,
        n_hours: int,
    ) -> SnapshotIndex:
        """Index rows whose hours are already validated to lie on the hour inside the horizon."""
        cells = np.asarray(cells, dtype="uint64")
        unique_cells, rank = np.unique(cells, return_inverse=True)
        offset = (np.asarray(hour_ns, dtype="int64") - horizon_start_ns) // HOUR_NS
        keys = rank.astype("int64") * n_hours + offset
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        if len(sorted_keys) > 1 and (np.diff(sorted_keys) == 0).any():
            raise ValueError("the feature snapshot has duplicate (h3_cell, hour_start) keys")
        hours = pd.to_datetime(np.asarray(hour_ns, dtype="int64")[order], utc=True)
        return cls(
            cells=unique_cells,
            horizon_start_ns=int(horizon_start_ns),
            n_hours=int(n_hours),
            keys=sorted_keys,
            features=np.ascontiguousarray(np.asarray(features, dtype="float32")[order]),
            cell_strings=pa.array(cells_to_strings(cells[order]), type=pa.string()),
            hour_strings=pa.array(
                np.char.add(np.datetime_as_string(hours.to_numpy("datetime64[s]")), "+00:00"),
                type=pa.string(),
            ),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def has_cells(self, cells: np.ndarray) -> np.ndarray:
        """Whether each cell is one of the snapshot's active hexagons."""
        if len(self.cells) == 0:
            return np.zeros(len(cells), dtype=bool)
        rank = np.minimum(np.searchsorted(self.cells, cells), len(self.cells) - 1)
        return self.cells[rank] == cells

    def in_horizon(self, hour_ns: np.ndarray) -> np.ndarray:
        """Whether each (floored) hour lies in the half-open horizon."""
        offset = (hour_ns - self.horizon_start_ns) // HOUR_NS
        return (offset >= 0) & (offset < self.n_hours)

    def rows(self, cells: np.ndarray, hour_ns: np.ndarray) -> np.ndarray:
        """Row of each (cell, floored hour) in ``features``, ``MISSING_ROW`` where it has none."""
        cells = np.asarray(cells, dtype="uint64")
        hour_ns = np.asarray(hour_ns, dtype="int64")
        if len(self.keys) == 0:
            return np.full(len(cells), MISSING_ROW, dtype="int64")
        rank = np.minimum(np.searchsorted(self.cells, cells), len(self.cells) - 1)
        offset = (hour_ns - self.horizon_start_ns) // HOUR_NS
        key = rank.astype("int64") * self.n_hours + np.clip(offset, 0, self.n_hours - 1)
        position = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        found = (
            (self.cells[rank] == cells)
            & (offset >= 0)
            & (offset < self.n_hours)
            & (self.keys[position] == key)
        )
        return np.where(found, position, MISSING_ROW)
