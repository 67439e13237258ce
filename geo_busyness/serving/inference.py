"""Validated instances → predictions from the bundle's snapshot, as one batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from geo_busyness.core.geo import cells_to_strings
from geo_busyness.serving.bundle import LoadedBundle
from geo_busyness.serving.requests import CELL_FIELD, TIME_FIELD, Instances, RequestError


@dataclass(frozen=True, eq=False)
class Forecast:
    """One prediction per instance, in request order, keyed as the snapshot spells keys."""

    cells: pa.StringArray
    hours: pa.StringArray  # hour_start, ISO-8601 UTC
    busyness: np.ndarray  # float32, expected distinct orders in the hexagon that hour

    def __len__(self) -> int:
        return len(self.busyness)


def forecast(bundle: LoadedBundle, instances: Instances) -> Forecast:
    """Look every (cell, hour) up in the snapshot and predict them in one call.

    A key missing from the snapshot is the caller's error (422), not a zero: the server only
    knows features for the active hexagons of its horizon.
    """
    index = bundle.index
    rows = index.rows(instances.cells, instances.hour_ns)
    missing = rows < 0
    if missing.any():
        raise _not_in_snapshot(bundle, instances, missing)
    busyness = bundle.predict_rows(rows)
    if not np.isfinite(busyness).all():
        raise RuntimeError("the model predicted a non-finite busyness")  # a bug, not a bad request
    return Forecast(
        cells=index.cell_strings.take(rows), hours=index.hour_strings.take(rows), busyness=busyness
    )


def _not_in_snapshot(
    bundle: LoadedBundle, instances: Instances, missing: np.ndarray
) -> RequestError:
    offenders = np.flatnonzero(missing)
    first = int(offenders[0])
    cell = str(cells_to_strings(instances.cells[first : first + 1])[0])
    hour = pd.Timestamp(int(instances.hour_ns[first]), tz="UTC").isoformat()
    index, manifest = bundle.index, bundle.manifest
    known_cell = bool(index.has_cells(instances.cells[first : first + 1])[0])
    in_horizon = bool(index.in_horizon(instances.hour_ns[first : first + 1])[0])
    reasons = []
    if not in_horizon:
        reasons.append(
            f"{hour} is outside the snapshot's horizon "
            f"[{manifest.horizon_start}, {manifest.horizon_end})"
        )
    if not known_cell:
        reasons.append(
            f"{cell} is not an active hexagon of the snapshot "
            f"({len(index.cells)} hexagons at resolution {manifest.h3_resolution})"
        )
    if not reasons:
        reasons.append(
            f"the snapshot has no features for that hour of that hexagon "
            f"(horizon [{manifest.horizon_start}, {manifest.horizon_end}))"
        )
    others = f" (and {len(offenders) - 1} more instances)" if len(offenders) > 1 else ""
    return RequestError(
        422,
        f"instance {first}: no forecast for {cell} at {hour}: {'; '.join(reasons)}{others}",
        field=TIME_FIELD if known_cell and not in_horizon else CELL_FIELD,
        instance=first,
    )
