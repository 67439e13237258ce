"""Hourly busyness per hexagon, restaurants, clusters and leak-free forecasting features.

The feature builder lays the history out as a dense matrix (cells x hours) so every lag and
rolling window is a column slice that ends strictly before the target hour: leakage would
have to be written as an explicit index into the future.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pandas as pd

from geo_busyness.core.city import City
from geo_busyness.core.geo import (
    cell_centers,
    cells_for,
    cells_to_strings,
    euclidean_deg,
    haversine_km,
    neighbour_pairs,
    strings_to_cells,
)

HOUR_NS = 3_600 * 10**9
SAME_HOUR_WEEKS = 4  # the same hour of the week, this many weeks back, averaged
# the 4-week same-hour mean's 672 h lag plus a 24 h window before the first target hour
LOOKBACK_DAYS = 7 * SAME_HOUR_WEEKS + 1
HOURLY_COLUMNS = (
    "h3_cell",
    "hour_start",
    "orders",
    "pings",
    "couriers",
    "courier_restaurant_km_mean",
    "courier_restaurant_deg_mean",
)
HOURLY_KEY = ("h3_cell", "hour_start")
TARGET_COLUMN = "orders"
TARGETS = ("orders", "pings", "couriers")
# A day whose activity stops earlier than the city's usual quiet end of day is partial; the
# usual quiet tail is learned per city from its days (quantile), widened by a factor, never
# below a floor (a city busy around the clock has no quiet tail, but an export may end in
# the last hour).
QUIET_TAIL_QUANTILE = 0.5  # the median day: robust to the few partial days themselves
QUIET_TAIL_FACTOR = 1.5
QUIET_TAIL_FLOOR_H = 2


def day_watermarks(hourly_by_day: dict[str, pd.DataFrame]) -> dict[str, pd.Timestamp]:
    """Per day: the hour after its last active hour (the day's start when nothing is)."""
    marks = {}
    for day, hourly in hourly_by_day.items():
        start = pd.Timestamp(day, tz="UTC")
        last = hourly["hour_start"].max() if len(hourly) else None
        marks[day] = start if last is None or pd.isna(last) else last + pd.Timedelta(hours=1)
    return marks


def day_end(day: str) -> pd.Timestamp:
    """The first instant after ``day`` (UTC)."""
    return pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)


def partial_days(
    hourly_by_day: dict[str, pd.DataFrame],
    landed_until: Mapping[str, pd.Timestamp] | None = None,
) -> dict[str, pd.Timestamp]:
    """Days whose data stops early, each with its watermark: hours from it to the day's end are
    unknown (not zero). Early means either of:

    * the day's files all landed before the day ended (``landed_until``: an export taken at
      20:10 cannot hold the evening): unknown from the landing hour on (from the hour after
      the last active one when the landing falls in that hour). A landing before the last
      active hour contradicts the data and is ignored;
    * the hours left after the day's last active hour exceed the city's usual quiet tail,
      learned from these days themselves (a city with quiet nights keeps its quiet hours as
      observed zeros; an export that ends at 03:47 does not)."""
    marks = day_watermarks(hourly_by_day)
    if not marks:
        return {}
    tails = np.array([(day_end(day) - mark) / pd.Timedelta(hours=1) for day, mark in marks.items()])
    tolerance = max(
        QUIET_TAIL_FLOOR_H, QUIET_TAIL_FACTOR * float(np.quantile(tails, QUIET_TAIL_QUANTILE))
    )
    partial = {
        day: mark
        for (day, mark), tail in zip(marks.items(), tails, strict=True)
        if tail > tolerance
    }
    for day, landed in (landed_until or {}).items():
        hour = landed.floor("h")
        # a landing before the day's last active hour is no evidence: a clock that is off, or
        # copied files that kept an old mtime
        if day in marks and marks[day] - pd.Timedelta(hours=1) <= hour < day_end(day):
            partial[day] = max(marks[day], hour)
    return partial


def _factorize(values: pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype("int64"), len(uniques)


def hex_hourly_busyness(clean: pd.DataFrame, resolution: int) -> pd.DataFrame:
    """Per (H3 cell, UTC hour): distinct orders, pings, couriers and mean courier→restaurant distance.

    ``orders`` (distinct order numbers) is the busyness target; ``pings`` is the PoC's
    ``orders_busyness_by_h3_hour``.
    """
    if clean.empty:
        return _empty_hourly()
    cells = cells_for(clean["courier_lat"].to_numpy(), clean["courier_lon"].to_numpy(), resolution)
    cell_code, n_cells = _factorize(pd.Series(cells))
    hour_ns = clean["courier_location_timestamp"].dt.floor("h").astype("int64").to_numpy()
    first_hour = hour_ns.min()
    hour_code = (hour_ns - first_hour) // HOUR_NS
    n_hours = int(hour_code.max()) + 1
    group = cell_code * n_hours + hour_code
    size = n_cells * n_hours

    pings = np.bincount(group, minlength=size)
    orders = _distinct_per_group(group, clean["order_number"], size)
    couriers = _distinct_per_group(group, clean["courier_id"], size)
    lat, lon = clean["courier_lat"].to_numpy(), clean["courier_lon"].to_numpy()
    r_lat, r_lon = clean["restaurant_lat"].to_numpy(), clean["restaurant_lon"].to_numpy()
    km_sum = np.bincount(group, weights=haversine_km(lat, lon, r_lat, r_lon), minlength=size)
    deg_sum = np.bincount(group, weights=euclidean_deg(lat, lon, r_lat, r_lon), minlength=size)

    present = np.flatnonzero(pings)
    unique_cells = (
        pd.Series(cells).iloc[np.unique(cell_code, return_index=True)[1]].to_numpy("uint64")
    )
    cell_names = cells_to_strings(unique_cells)
    frame = pd.DataFrame(
        {
            "h3_cell": pd.array(cell_names[present // n_hours], dtype="string"),
            "hour_start": pd.to_datetime(first_hour + (present % n_hours) * HOUR_NS, utc=True),
            "orders": orders[present].astype("int64"),
            "pings": pings[present].astype("int64"),
            "couriers": couriers[present].astype("int64"),
            "courier_restaurant_km_mean": km_sum[present] / pings[present],
            "courier_restaurant_deg_mean": deg_sum[present] / pings[present],
        }
    )
    return frame.sort_values(list(HOURLY_KEY), ignore_index=True)


def _distinct_per_group(group: np.ndarray, values: pd.Series, size: int) -> np.ndarray:
    code, n_values = _factorize(values)
    pairs = np.unique(group * np.int64(n_values) + code)
    return np.bincount(pairs // n_values, minlength=size)


def _empty_hourly() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "h3_cell": pd.array([], dtype="string"),
            "hour_start": pd.to_datetime(pd.Series([], dtype="int64"), utc=True),
            "orders": np.zeros(0, "int64"),
            "pings": np.zeros(0, "int64"),
            "couriers": np.zeros(0, "int64"),
            "courier_restaurant_km_mean": np.zeros(0),
            "courier_restaurant_deg_mean": np.zeros(0),
        }
    )


def duplicate_hourly_keys(hourly: pd.DataFrame) -> int:
    """Number of rows whose (h3_cell, hour_start) key appears more than once."""
    return int(hourly.duplicated(list(HOURLY_KEY), keep=False).sum())


# ---------------------------------------------------------------------------------------------
# Restaurants and clusters


def restaurant_sightings(clean: pd.DataFrame) -> pd.DataFrame:
    """Distinct restaurant locations seen in one day of pings, with their ping counts.

    Needs only the two restaurant coordinate columns, so a month of days stays small in memory.
    """
    lat_e5 = np.round(clean["restaurant_lat"].to_numpy() * 1e5).astype("int64")
    lon_e5 = np.round(clean["restaurant_lon"].to_numpy() * 1e5).astype("int64")
    frame = pd.DataFrame({"lat_e5": lat_e5, "lon_e5": lon_e5})
    return (
        frame.groupby(["lat_e5", "lon_e5"], as_index=False).size().rename(columns={"size": "pings"})
    )


def restaurants_from_sightings(
    sightings_by_day: dict[str, pd.DataFrame], resolution: int
) -> pd.DataFrame:
    """Restaurant table with ids derived from coordinates (stable across runs and order of days).

    Coordinates are rounded to 1e-5 degrees (about 1 m); the id is a hash of the rounded pair.
    """
    columns = ["restaurant_id", "lat", "lon", "h3_cell", "first_seen", "last_seen", "pings"]
    frames = [frame.assign(day=day) for day, frame in sightings_by_day.items() if not frame.empty]
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype="object") for column in columns})
    seen = pd.concat(frames, ignore_index=True)
    table = seen.groupby(["lat_e5", "lon_e5"], as_index=False).agg(
        first_seen=("day", "min"), last_seen=("day", "max"), pings=("pings", "sum")
    )
    key = pd.util.hash_pandas_object(table[["lat_e5", "lon_e5"]], index=False).to_numpy("uint64")
    lat, lon = table["lat_e5"].to_numpy() / 1e5, table["lon_e5"].to_numpy() / 1e5
    result = pd.DataFrame(
        {
            "restaurant_id": pd.array(
                np.char.add("r", np.char.zfill(np.char.mod("%x", key), 16)), dtype="string"
            ),
            "lat": lat,
            "lon": lon,
            "h3_cell": pd.array(cells_to_strings(cells_for(lat, lon, resolution)), dtype="string"),
            "first_seen": pd.array(table["first_seen"], dtype="string"),
            "last_seen": pd.array(table["last_seen"], dtype="string"),
            "pings": table["pings"].astype("int64"),
        }
    )
    return result.sort_values("restaurant_id", ignore_index=True)


def cluster_restaurants(restaurants: pd.DataFrame, n_clusters: int, seed: int = 0) -> pd.DataFrame:
    """K-means neighbourhoods of restaurants on a local equal-distance projection.

    Rows are fitted in restaurant-id order and labels ordered by centroid (south to north),
    so labels do not change between runs when the restaurants do not.
    """
    restaurants = restaurants.sort_values("restaurant_id", ignore_index=True)
    if len(restaurants) < n_clusters:
        raise ValueError(
            f"need at least {n_clusters} restaurants to form {n_clusters} clusters, got {len(restaurants)}"
        )
    lat, lon = restaurants["lat"].to_numpy(), restaurants["lon"].to_numpy()
    scale = np.cos(np.radians(lat.mean()))
    points = np.column_stack([lat, lon * scale])
    from sklearn.cluster import KMeans  # here: most run processes never cluster

    model = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(points)
    order = np.lexsort((model.cluster_centers_[:, 1], model.cluster_centers_[:, 0]))
    relabel = np.empty(n_clusters, dtype="int64")
    relabel[order] = np.arange(n_clusters)
    label = relabel[model.labels_]
    centres = model.cluster_centers_[order]
    result = restaurants.copy()
    result["cluster"] = label
    result["centroid_lat"] = centres[label, 0]
    result["centroid_lon"] = centres[label, 1] / scale
    return result


# ---------------------------------------------------------------------------------------------
# Features


def feature_columns(n_clusters: int) -> list[str]:
    """Model inputs, in a fixed order."""
    base = [
        "orders_lag_1h",
        "orders_lag_24h",
        "orders_lag_168h",
        "orders_same_hour_mean_4w",
        "orders_same_hour_weeks_known",
        "orders_expected_4w",
        "orders_mean_3h",
        "orders_mean_24h",
        "orders_mean_168h",
        "pings_lag_1h",
        "couriers_lag_1h",
        "neighbour_orders_lag_1h",
        "neighbour_orders_lag_24h",
        "neighbour_orders_mean_24h",
        "courier_restaurant_km_mean_24h",
        "courier_restaurant_deg_mean_24h",
        "hour_of_day",
        "day_of_week",
        "is_weekend",
        "restaurants_in_cell",
    ]
    clusters = [f"cluster_{k}_share" for k in range(n_clusters)]
    distances = [f"cluster_{k}_km" for k in range(n_clusters)]
    return base + clusters + distances


def busyness_features(
    hourly_by_day: dict[str, pd.DataFrame],
    day: str,
    restaurant_clusters: pd.DataFrame,
    city: City,
    landed_until: Mapping[str, pd.Timestamp] | None = None,
) -> pd.DataFrame:
    """Day-ahead features and targets for every (active cell, hour) of ``day`` (UTC).

    Features use only hours before ``day`` starts, exactly what is known when the day is
    forecast the day before (``busyness_forecast``), so training rows and forecast rows are
    built alike; 1h/3h lags are therefore known only for the first hours of the day.

    ``hourly_by_day`` holds the hex_hourly_busyness partitions that exist among the
    ``LOOKBACK_DAYS`` before ``day`` and ``day`` itself; hours of days absent from it are
    unknown (NaN), not zero. Cells are those active in the lookback or holding a restaurant
    first seen before ``day``: membership itself never depends on the target day. Hours of a
    partial day (:func:`partial_days`, with when each day's files landed) are unknown too.
    """
    target_day = dt.date.fromisoformat(day)
    days = [
        (target_day - dt.timedelta(days=offset)).isoformat()
        for offset in range(LOOKBACK_DAYS, -1, -1)
    ]
    window_start = pd.Timestamp(days[0], tz="UTC")
    n_hours = len(days) * 24
    target_slice = slice(n_hours - 24, n_hours)

    history = [
        hourly_by_day[d] for d in days[:-1] if d in hourly_by_day and not hourly_by_day[d].empty
    ]
    past = pd.concat(history, ignore_index=True) if history else _empty_hourly()
    known = restaurant_clusters.loc[restaurant_clusters["first_seen"] < day]
    cell_names = np.unique(
        np.concatenate([past["h3_cell"].to_numpy(str), known["h3_cell"].to_numpy(str)])
    )
    n_cells = len(cell_names)
    columns = [
        "h3_cell",
        "hour_start",
        *feature_columns(city.n_restaurant_clusters),
        "orders",
        "pings",
        "couriers",
    ]
    if n_cells == 0:
        return pd.DataFrame({column: [] for column in columns})

    observed = np.zeros(n_hours, dtype=bool)
    for index, d in enumerate(days):
        if d in hourly_by_day:
            observed[index * 24 : (index + 1) * 24] = True
    partial = partial_days({d: hourly_by_day[d] for d in days if d in hourly_by_day}, landed_until)
    for d, mark in partial.items():  # after a day's watermark its hours are unknown
        index = days.index(d)
        first_unknown = index * 24 + int(
            (mark - pd.Timestamp(d, tz="UTC")) // pd.Timedelta(hours=1)
        )
        observed[first_unknown : (index + 1) * 24] = False
    everything = pd.concat([past, hourly_by_day.get(day, _empty_hourly())], ignore_index=True)
    row = np.searchsorted(cell_names, everything["h3_cell"].to_numpy(str))
    in_grid = (row < n_cells) & (
        cell_names[np.minimum(row, n_cells - 1)] == everything["h3_cell"].to_numpy(str)
    )
    col = (
        (everything["hour_start"].astype("int64").to_numpy() - window_start.value) // HOUR_NS
    ).astype("int64")
    in_grid &= (col >= 0) & (col < n_hours)
    row, col, everything = row[in_grid], col[in_grid], everything.loc[in_grid]

    targets = np.arange(target_slice.start, target_slice.stop)
    # Day-ahead: the target day's own hours are never inputs, as when forecasting it the day
    # before; lags that reach into it (1h, 3h) are known only for its first hours.
    observed[target_slice] = False

    def matrix(values: np.ndarray) -> np.ndarray:
        grid = np.zeros((n_cells, n_hours))
        grid[row, col] = values
        return grid

    actual = {name: matrix(everything[name].to_numpy("float64")) for name in TARGETS}
    orders, pings, couriers = (
        np.where(observed, actual[name], np.nan) for name in ("orders", "pings", "couriers")
    )
    km_sum, deg_sum = (
        np.where(
            observed, matrix(everything[column].to_numpy() * everything["pings"].to_numpy()), np.nan
        )
        for column in ("courier_restaurant_km_mean", "courier_restaurant_deg_mean")
    )

    cells = strings_to_cells(cell_names)
    i, j = neighbour_pairs(cells, k=1)
    from scipy import sparse

    adjacency = sparse.csr_matrix((np.ones(len(i)), (i, j)), shape=(n_cells, n_cells))
    neighbours = adjacency @ np.nan_to_num(orders)
    neighbours[:, ~observed] = np.nan

    features: dict[str, np.ndarray] = {
        "orders_lag_1h": _lag(orders, targets, 1),
        "orders_lag_24h": _lag(orders, targets, 24),
        "orders_lag_168h": _lag(orders, targets, 168),
        **_same_hour_of_week(orders, targets),
        "orders_expected_4w": _expected_from_profile(orders, observed, targets),
        "orders_mean_3h": _window_sum(orders, targets, 3) / _window_count(observed, targets, 3),
        "orders_mean_24h": _window_sum(orders, targets, 24) / _window_count(observed, targets, 24),
        "orders_mean_168h": _window_sum(orders, targets, 168)
        / _window_count(observed, targets, 168),
        "pings_lag_1h": _lag(pings, targets, 1),
        "couriers_lag_1h": _lag(couriers, targets, 1),
        "neighbour_orders_lag_1h": _lag(neighbours, targets, 1),
        "neighbour_orders_lag_24h": _lag(neighbours, targets, 24),
        "neighbour_orders_mean_24h": _window_sum(neighbours, targets, 24)
        / _window_count(observed, targets, 24),
        "courier_restaurant_km_mean_24h": _ratio(
            _window_sum(km_sum, targets, 24), _window_sum(pings, targets, 24)
        ),
        "courier_restaurant_deg_mean_24h": _ratio(
            _window_sum(deg_sum, targets, 24), _window_sum(pings, targets, 24)
        ),
    }
    hour_starts = window_start + pd.to_timedelta(targets, unit="h")
    local = hour_starts.tz_convert(city.timezone)
    n_targets = len(targets)
    frame = pd.DataFrame(
        {
            "h3_cell": pd.array(np.repeat(cell_names, n_targets), dtype="string"),
            "hour_start": pd.to_datetime(np.tile(hour_starts.asi8, n_cells), utc=True),
            **{name: values.ravel() for name, values in features.items()},
            "hour_of_day": np.tile(local.hour.to_numpy("int64"), n_cells),
            "day_of_week": np.tile(local.dayofweek.to_numpy("int64"), n_cells),
            "is_weekend": np.tile((local.dayofweek >= 5).astype("int64"), n_cells),
        }
    )
    static = _cell_static_features(cell_names, cells, known, restaurant_clusters, city)
    frame = frame.join(static, on="h3_cell")
    for name in TARGETS:
        frame[name] = actual[name][:, targets].ravel().astype("int64")
    if day in partial:  # hours after the target day's watermark are never targets
        frame = frame.loc[frame["hour_start"] < partial[day]].reset_index(drop=True)
    return frame.loc[:, columns]


def _lag(grid: np.ndarray, targets: np.ndarray, hours: int) -> np.ndarray:
    """Value ``hours`` before each target hour (NaN before the window)."""
    source = targets - hours
    out = np.full((grid.shape[0], len(targets)), np.nan)
    ok = source >= 0
    out[:, ok] = grid[:, source[ok]]
    return out


def _same_hour_of_week(grid: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of the same hour 1..SAME_HOUR_WEEKS weeks before, over the weeks that are known
    (an unknown week is left out, not counted as zero), and how many weeks were known."""
    lags = np.stack([_lag(grid, targets, 168 * week) for week in range(1, SAME_HOUR_WEEKS + 1)])
    known = np.isfinite(lags).sum(axis=0).astype("float64")
    total = np.nansum(lags, axis=0)
    mean = np.divide(total, known, out=np.full(total.shape, np.nan), where=known > 0)
    return {"orders_same_hour_mean_4w": mean, "orders_same_hour_weeks_known": known}


def _expected_from_profile(
    grid: np.ndarray, observed: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """The cell's mean hour over the last 4 weeks times the city's profile for the hour of the
    week (its same-hour total over the known weeks / its mean hourly total): a low-variance
    estimate of the expected count, since both factors average many more orders than one
    cell-hour of four weeks does."""
    hours = 168 * SAME_HOUR_WEEKS
    level = _window_sum(grid, targets, hours) / _window_count(observed, targets, hours)
    city = np.where(observed, np.nansum(grid, axis=0), np.nan)[None, :]
    same_hour = _same_hour_of_week(city, targets)["orders_same_hour_mean_4w"]
    city_mean = _window_sum(city, targets, hours) / _window_count(observed, targets, hours)
    profile = np.divide(
        same_hour, city_mean, out=np.full(same_hour.shape, np.nan), where=city_mean > 0
    )
    return level * profile


def _window_sum(grid: np.ndarray, targets: np.ndarray, hours: int) -> np.ndarray:
    """Sum over the ``hours`` hours ending one hour before each target (unknown hours skipped)."""
    cumulative = np.concatenate(
        [np.zeros((grid.shape[0], 1)), np.cumsum(np.nan_to_num(grid), axis=1)], axis=1
    )
    end = targets  # exclusive: the target hour itself is never included
    start = np.maximum(targets - hours, 0)
    return cumulative[:, end] - cumulative[:, start]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where nothing was counted."""
    return np.divide(
        numerator, denominator, out=np.full(numerator.shape, np.nan), where=denominator > 0
    )


def _window_count(observed: np.ndarray, targets: np.ndarray, hours: int) -> np.ndarray:
    """Known hours in each window; NaN where none is known so that the mean is NaN."""
    cumulative = np.concatenate([[0], np.cumsum(observed)])
    count = (cumulative[targets] - cumulative[np.maximum(targets - hours, 0)]).astype("float64")
    count[count == 0] = np.nan
    return count[None, :]


def _cell_static_features(
    cell_names: np.ndarray,
    cells: np.ndarray,
    restaurants: pd.DataFrame,
    restaurant_clusters: pd.DataFrame,
    city: City,
) -> pd.DataFrame:
    """Restaurants per cell (known before the day), their cluster mix, distance to each cluster.

    Cluster centroids describe the city's static layout, so they come from every restaurant.
    """
    n_clusters = city.n_restaurant_clusters
    counts = pd.crosstab(restaurants["h3_cell"], restaurants["cluster"]).reindex(
        index=cell_names, columns=range(n_clusters), fill_value=0
    )
    total = counts.sum(axis=1).to_numpy()
    shares = counts.to_numpy() / np.maximum(total, 1)[:, None]
    static = pd.DataFrame(index=pd.Index(cell_names, name="h3_cell"))
    static["restaurants_in_cell"] = total.astype("int64")
    for k in range(n_clusters):
        static[f"cluster_{k}_share"] = shares[:, k]
    lat, lon = cell_centers(cells)
    centroids = restaurant_clusters.groupby("cluster")[["centroid_lat", "centroid_lon"]].first()
    for k in range(n_clusters):
        if k in centroids.index:
            c_lat, c_lon = centroids.loc[k]
            static[f"cluster_{k}_km"] = haversine_km(lat, lon, c_lat, c_lon)
        else:
            static[f"cluster_{k}_km"] = np.nan
    static.index = static.index.astype("string")
    return static
