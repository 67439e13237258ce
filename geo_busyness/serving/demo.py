"""A synthetic bundle for trying the server without running the pipeline, and for its tests
and benchmark: the real feature columns over the hexagons around a city's centre, and an
early-stopped XGBoost count model fitted in about a second on rows drawn the same way.

``python -m geo_busyness.serving.demo DIR`` writes one (``--cities`` a two-city bundle: Regina
at resolution 7 and Saskatoon at resolution 8, each with its own model and version).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import xgboost as xgb

from geo_busyness.core.city import DEFAULT_CITY, City
from geo_busyness.core.features import HOUR_NS, feature_columns
from geo_busyness.serving.bundle import CityMember, Manifest, write_bundle, write_city_bundle

DEMO_HORIZON_START = pd.Timestamp("2025-03-03T00:00:00Z")
# A second city at another resolution, for multi-city bundles: (city id, city, version, seed).
DEMO_CITIES = (
    ("regina", DEFAULT_CITY, "3", 0),
    (
        "saskatoon",
        City(
            name="Saskatoon, SK",
            center_lat=52.1332,
            center_lon=-106.6700,
            timezone="America/Regina",
            h3_resolution=8,
        ),
        "12",
        1,
    ),
)


def demo_cells(city: City = DEFAULT_CITY, rings: int = 3) -> list[str]:
    """The hexagon of the city's centre and ``rings`` rings of neighbours around it, sorted."""
    centre = h3.latlng_to_cell(city.center_lat, city.center_lon, city.h3_resolution)
    return sorted(h3.grid_disk(centre, rings))


def demo_rows(
    cells: list[str], hour_ns: np.ndarray, n_clusters: int, rng: np.random.Generator
) -> pd.DataFrame:
    """One feature row per (cell, hour) pair given, plus an ``orders`` target that depends on
    them; about 5% of lag values are missing, as at the start of the real history."""
    n = len(cells)
    hours = pd.to_datetime(hour_ns, utc=True)
    level = rng.gamma(2.0, 1.5, n)
    frame = pd.DataFrame({"h3_cell": pd.array(cells, dtype="string"), "hour_start": hours})
    daily = 1.0 + np.sin(2 * np.pi * (hours.hour.to_numpy() - 6) / 24)
    for name in ("orders_lag_1h", "orders_lag_24h", "orders_lag_168h"):
        frame[name] = rng.poisson(level * daily).astype("float64")
    for name in ("orders_mean_3h", "orders_mean_24h", "orders_mean_168h"):
        frame[name] = level * rng.uniform(0.7, 1.3, n)
    frame["orders_same_hour_mean_4w"] = level * daily * rng.uniform(0.8, 1.2, n)
    frame["orders_same_hour_weeks_known"] = rng.integers(1, 5, n).astype("float64")
    frame["orders_expected_4w"] = level * daily * rng.uniform(0.9, 1.1, n)
    frame["pings_lag_1h"] = frame["orders_lag_1h"] * rng.uniform(5, 15, n)
    frame["couriers_lag_1h"] = np.ceil(frame["orders_lag_1h"] / 2)
    for name in ("neighbour_orders_lag_1h", "neighbour_orders_lag_24h"):
        frame[name] = rng.poisson(level * daily * 6).astype("float64")
    frame["neighbour_orders_mean_24h"] = level * 6 * rng.uniform(0.8, 1.2, n)
    frame["courier_restaurant_km_mean_24h"] = rng.uniform(0.5, 4.0, n)
    frame["courier_restaurant_deg_mean_24h"] = frame["courier_restaurant_km_mean_24h"] / 90
    frame["hour_of_day"] = hours.hour.to_numpy()
    frame["day_of_week"] = hours.dayofweek.to_numpy()
    frame["is_weekend"] = (frame["day_of_week"] >= 5).astype("int64")
    frame["restaurants_in_cell"] = rng.poisson(3, n)
    shares = rng.dirichlet(np.ones(n_clusters), n)
    for k in range(n_clusters):
        frame[f"cluster_{k}_share"] = shares[:, k]
    for k in range(n_clusters):
        frame[f"cluster_{k}_km"] = rng.uniform(0.5, 15.0, n)
    for name in ("orders_lag_1h", "orders_lag_168h", "pings_lag_1h"):
        frame.loc[rng.random(n) < 0.05, name] = np.nan
    expected = level * daily * (1 + 0.3 * frame["restaurants_in_cell"].to_numpy() / 3)
    frame["orders"] = rng.poisson(expected)
    return frame[["h3_cell", "hour_start", *feature_columns(n_clusters), "orders"]]


def demo_features(
    city: City = DEFAULT_CITY,
    rings: int = 3,
    horizon_start: pd.Timestamp = DEMO_HORIZON_START,
    hours: int = 24,
    seed: int = 0,
) -> pd.DataFrame:
    """A snapshot: every demo cell at every hour of ``[horizon_start, +hours)``."""
    cells = demo_cells(city, rings)
    hour_ns = horizon_start.value + np.arange(hours, dtype="int64") * HOUR_NS
    grid_cells = np.repeat(np.asarray(cells, dtype=object), hours)
    grid_hours = np.tile(hour_ns, len(cells))
    rng = np.random.default_rng(seed)
    return demo_rows(list(grid_cells), grid_hours, city.n_restaurant_clusters, rng)


def demo_model(
    city: City = DEFAULT_CITY, n_estimators: int = 200, max_depth: int = 6, seed: int = 0
) -> xgb.XGBRegressor:
    """A Poisson model early-stopped on a validation slice, so it holds trees past its best
    iteration (as the trained models do) and serving must predict with the best one."""
    rng = np.random.default_rng(seed + 1)
    n = 6_000
    cells = demo_cells(city, rings=3)
    history = demo_rows(
        list(rng.choice(np.asarray(cells, dtype=object), n)),
        DEMO_HORIZON_START.value - rng.integers(1, 24 * 28, n) * HOUR_NS,
        city.n_restaurant_clusters,
        rng,
    )
    names = feature_columns(city.n_restaurant_clusters)
    train, valid = history.iloc[: n * 3 // 4], history.iloc[n * 3 // 4 :]
    model = xgb.XGBRegressor(
        objective="count:poisson",
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=0.3,
        early_stopping_rounds=10,
        n_jobs=1,
        random_state=seed,
    )
    model.fit(
        train[names], train["orders"], eval_set=[(valid[names], valid["orders"])], verbose=False
    )
    return model


def write_demo_bundle(
    directory: Path,
    city: City = DEFAULT_CITY,
    rings: int = 3,
    hours: int = 24,
    n_estimators: int = 200,
    seed: int = 0,
) -> Path:
    """Write a complete demo bundle to ``directory``."""
    features = demo_features(city, rings, DEMO_HORIZON_START, hours, seed)
    names = feature_columns(city.n_restaurant_clusters)
    manifest = Manifest(
        model_name="busyness-demo",
        model_version="0",
        mlflow_run_id=None,
        feature_names=names,
        h3_resolution=city.h3_resolution,
        horizon_start=DEMO_HORIZON_START.isoformat(),
        horizon_end=(DEMO_HORIZON_START + pd.Timedelta(hours=hours)).isoformat(),
    )
    return write_bundle(directory, demo_model(city, n_estimators, seed=seed), features, manifest)


def demo_city_members(
    rings: int = 2, hours: int = 6, n_estimators: int = 40
) -> dict[str, CityMember]:
    """The members of ``DEMO_CITIES``: different models (seeds), resolutions and versions, so a
    prediction routed to the wrong city differs from the right one."""
    members = {}
    for city_id, city, version, seed in DEMO_CITIES:
        features = demo_features(city, rings, DEMO_HORIZON_START, hours, seed)
        manifest = Manifest(
            model_name=f"busyness-{city_id}",
            model_version=version,
            mlflow_run_id=None,
            feature_names=feature_columns(city.n_restaurant_clusters),
            h3_resolution=city.h3_resolution,
            horizon_start=DEMO_HORIZON_START.isoformat(),
            horizon_end=(DEMO_HORIZON_START + pd.Timedelta(hours=hours)).isoformat(),
        )
        model = demo_model(city, n_estimators, seed=seed)
        members[city_id] = CityMember(model, features, manifest)
    return members


def write_demo_city_bundle(
    directory: Path, rings: int = 2, hours: int = 6, n_estimators: int = 40
) -> Path:
    """Write the two-city demo bundle to ``directory``."""
    return write_city_bundle(directory, demo_city_members(rings, hours, n_estimators))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic deployment bundle.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--rings", type=int, default=3, help="rings of hexagons around the centre")
    parser.add_argument("--hours", type=int, default=24, help="hours in the horizon")
    parser.add_argument("--cities", action="store_true", help="a two-city bundle")
    args = parser.parse_args(argv)
    if args.cities:
        print(write_demo_city_bundle(args.directory, rings=args.rings, hours=args.hours))
    else:
        print(write_demo_bundle(args.directory, rings=args.rings, hours=args.hours))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
