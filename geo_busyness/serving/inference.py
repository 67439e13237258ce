"""Validated instances → predictions from the bundle's snapshot, as one batch.

A multi-city bundle routes each instance to the member whose snapshot holds its hexagon: an
``h3_cell`` is looked up in every member (cells of different resolutions are different
integers, and members at one resolution share none), a coordinate is converted at each
member's resolution first. Members are tried in routing order and the first holding the
cell answers; each member then predicts its instances in one call, so the work is a loop
over members, never over instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from geo_busyness.core.geo import cells_for, cells_to_strings
from geo_busyness.serving.bundle import LoadedBundle, MultiCityBundle
from geo_busyness.serving.requests import (
    CELL_FIELD,
    LAT_FIELD,
    TIME_FIELD,
    Instances,
    RequestError,
)
from geo_busyness.serving.snapshot import MISSING_ROW


@dataclass(frozen=True, eq=False)
class Forecast:
    """One prediction per instance, in request order, keyed as the snapshot spells keys.

    ``cities``/``model_versions`` name, per prediction, the member of a multi-city bundle
    that answered it; None for a single-city bundle.
    """

    cells: pa.StringArray
    hours: pa.StringArray  # hour_start, ISO-8601 UTC
    busyness: np.ndarray  # float32, expected distinct orders in the hexagon that hour
    cities: pa.StringArray | None = None
    model_versions: pa.StringArray | None = None
    contributions: pa.StringArray | None = None  # JSON objects, when the request asked

    def __len__(self) -> int:
        return len(self.busyness)


def forecast(bundle: LoadedBundle | MultiCityBundle, instances: Instances) -> Forecast:
    """Look every (cell, hour) up in the snapshot and predict them in one call.

    A key missing from the snapshot is the caller's error (422), not a zero: the server only
    knows features for the active hexagons of its horizon.
    """
    if isinstance(bundle, MultiCityBundle):
        return forecast_cities(bundle, instances)
    index = bundle.index
    rows = index.rows(instances.cells, instances.hour_ns)
    missing = rows < 0
    if missing.any():
        raise _not_in_snapshot(bundle, instances, missing)
    busyness = bundle.predict_rows(rows)
    if not np.isfinite(busyness).all():
        raise RuntimeError("the model predicted a non-finite busyness")  # a bug, not a bad request
    return Forecast(
        cells=index.cell_strings.take(rows),
        hours=index.hour_strings.take(rows),
        busyness=busyness,
        contributions=bundle.contributions_json(rows) if instances.explain else None,
    )


def route(bundle: MultiCityBundle, instances: Instances) -> tuple[np.ndarray, np.ndarray]:
    """``(member position, cell)`` of each instance; position -1 where no member holds it.

    Coordinates are converted once per distinct resolution, not once per member.
    """
    n = len(instances)
    owner = np.full(n, -1, dtype="int64")
    cells = instances.cells.copy()
    coordinates = instances.coordinates
    converted: dict[int, np.ndarray] = {}
    for position, member in enumerate(bundle.members.values()):
        candidate = instances.cells
        if coordinates is not None and coordinates.any():
            level = member.manifest.h3_resolution
            if level not in converted:
                at_level = instances.cells.copy()
                at_level[coordinates] = cells_for(
                    instances.lat[coordinates], instances.lon[coordinates], level
                )
                converted[level] = at_level
            candidate = converted[level]
        held = (owner < 0) & member.index.has_cells(candidate)
        owner[held] = position
        cells[held] = candidate[held]
    return owner, cells


def forecast_cities(bundle: MultiCityBundle, instances: Instances) -> Forecast:
    """``forecast`` for a multi-city bundle: route, then one lookup and prediction per member."""
    n = len(instances)
    members = list(bundle.members.values())
    owner, cells = route(bundle, instances)
    groups = [np.flatnonzero(owner == position) for position in range(len(members))]
    rows = np.full(n, MISSING_ROW, dtype="int64")
    for member, where in zip(members, groups, strict=True):
        if len(where):
            rows[where] = member.index.rows(cells[where], instances.hour_ns[where])
    bad = np.flatnonzero(rows < 0)
    if len(bad):
        raise _not_in_any_snapshot(bundle, instances, owner, cells, bad)
    busyness = np.empty(n, dtype="float32")
    for member, where in zip(members, groups, strict=True):
        if len(where):
            busyness[where] = member.predict_rows(rows[where])
    if not np.isfinite(busyness).all():
        raise RuntimeError("the model predicted a non-finite busyness")  # a bug, not a bad request
    # Each member's strings in group order, then back to request order with one take.
    order = np.concatenate(groups)
    inverse = pa.array(np.argsort(order, kind="stable"))
    used = [(m, w) for m, w in zip(members, groups, strict=True) if len(w)]
    cell_strings = pa.concat_arrays([m.index.cell_strings.take(rows[w]) for m, w in used])
    hour_strings = pa.concat_arrays([m.index.hour_strings.take(rows[w]) for m, w in used])
    owners = pa.array(owner)
    contributions = None
    if instances.explain:  # each member's own features
        contributions = pa.concat_arrays([m.contributions_json(rows[w]) for m, w in used]).take(
            inverse
        )
    return Forecast(
        cells=cell_strings.take(inverse),
        hours=hour_strings.take(inverse),
        busyness=busyness,
        contributions=contributions,
        cities=pa.array(list(bundle.cities), pa.string()).take(owners),
        model_versions=pa.array(list(bundle.model_versions.values()), pa.string()).take(owners),
    )


def _not_in_snapshot(
    bundle: LoadedBundle, instances: Instances, missing: np.ndarray
) -> RequestError:
    offenders = np.flatnonzero(missing)
    first = int(offenders[0])
    return _explain(bundle, instances.cells[first], instances.hour_ns[first], first, offenders)


def _explain(
    bundle: LoadedBundle,
    cell_value: np.uint64,
    hour_ns: np.int64,
    first: int,
    offenders: np.ndarray,
    city: str | None = None,
) -> RequestError:
    """Why ``bundle`` has no row for instance ``first`` (one of ``offenders``)."""
    cells = np.asarray([cell_value], dtype="uint64")
    hours = np.asarray([hour_ns], dtype="int64")
    cell = str(cells_to_strings(cells)[0])
    hour = pd.Timestamp(int(hours[0]), tz="UTC").isoformat()
    index, manifest = bundle.index, bundle.manifest
    known_cell = bool(index.has_cells(cells)[0])
    in_horizon = bool(index.in_horizon(hours)[0])
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
    where = f" in {city}" if city is not None else ""
    return RequestError(
        422,
        f"instance {first}: no forecast for {cell} at {hour}{where}: {'; '.join(reasons)}{others}",
        field=TIME_FIELD if known_cell and not in_horizon else CELL_FIELD,
        instance=first,
    )


def _not_in_any_snapshot(
    bundle: MultiCityBundle,
    instances: Instances,
    owner: np.ndarray,
    cells: np.ndarray,
    offenders: np.ndarray,
) -> RequestError:
    """The 422 for the first instance without a row: no city holds it, or its city lacks it."""
    first = int(offenders[0])
    hour_ns = instances.hour_ns[first]
    if owner[first] >= 0:
        city = bundle.cities[owner[first]]
        return _explain(bundle.members[city], cells[first], hour_ns, first, offenders, city)
    hour = pd.Timestamp(int(hour_ns), tz="UTC").isoformat()
    known = "; ".join(
        f"{city}: {len(m.index.cells)} hexagons at resolution {m.manifest.h3_resolution}"
        for city, m in bundle.members.items()
    )
    others = f" (and {len(offenders) - 1} more instances)" if len(offenders) > 1 else ""
    coordinate = instances.coordinates is not None and bool(instances.coordinates[first])
    if coordinate:
        what = f"({instances.lat[first]}, {instances.lon[first]})"
        why = "lies in no active hexagon of any city's snapshot"
    else:
        what = str(cells_to_strings(instances.cells[first : first + 1])[0])
        why = "is not an active hexagon of any city's snapshot"
    return RequestError(
        422,
        f"instance {first}: no forecast for {what} at {hour}: {what} {why} ({known}){others}",
        field=LAT_FIELD if coordinate else CELL_FIELD,
        instance=first,
    )
