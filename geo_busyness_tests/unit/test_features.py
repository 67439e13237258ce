import datetime as dt
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.features import (
    LOOKBACK_DAYS,
    busyness_features,
    cluster_restaurants,
    duplicate_hourly_keys,
    feature_columns,
    hex_hourly_busyness,
    partial_days,
    restaurant_sightings,
    restaurants_from_sightings,
)
from geo_busyness.core.forecast import forecast_features
from geo_busyness.core.geo import cells_for, cells_to_strings, haversine_km
from geo_busyness.simulate import SimulationConfig, simulated_city

pytestmark = pytest.mark.unit
RES = DEFAULT_CITY.h3_resolution
TARGET_DAY = "2026-10-10"


def clean_pings(day: str, n: int, seed: int) -> pd.DataFrame:
    """Typed clean pings around the city centre, 40 restaurants, several pings per order."""
    rng = np.random.default_rng([seed, dt.date.fromisoformat(day).toordinal()])
    restaurants = (
        np.random.default_rng(99)
        .normal([DEFAULT_CITY.center_lat, DEFAULT_CITY.center_lon], 0.03, (40, 2))
        .round(6)
    )
    pick = rng.integers(0, 40, n)
    start = pd.Timestamp(day, tz="UTC")
    return pd.DataFrame(
        {
            "courier_id": pd.array(rng.integers(0, 30, n).astype(str), dtype="string"),
            "order_number": pd.array(
                np.char.add(day, rng.integers(0, n // 3 + 1, n).astype(str)), dtype="string"
            ),
            "courier_location_timestamp": start
            + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
            "courier_lat": restaurants[pick, 0] + rng.normal(0, 0.002, n),
            "courier_lon": restaurants[pick, 1] + rng.normal(0, 0.002, n),
            "order_created_timestamp": start,
            "restaurant_lat": restaurants[pick, 0],
            "restaurant_lon": restaurants[pick, 1],
            "source_file": pd.array(["f.csv"] * n, dtype="string"),
            "source_row": np.arange(n),
        }
    )


def days_before(day: str, count: int) -> list[str]:
    end = dt.date.fromisoformat(day)
    return [(end - dt.timedelta(days=k)).isoformat() for k in range(count, -1, -1)]


@pytest.fixture(scope="module")
def history():
    """hex_hourly_busyness for the lookback window and the target day, plus clusters."""
    days = days_before(TARGET_DAY, LOOKBACK_DAYS)
    cleans = {day: clean_pings(day, 3000, seed=1) for day in days}
    hourly = {day: hex_hourly_busyness(frame, RES) for day, frame in cleans.items()}
    restaurants = restaurants_from_sightings(
        {d: restaurant_sightings(f) for d, f in cleans.items()}, RES
    )
    return hourly, cluster_restaurants(restaurants, DEFAULT_CITY.n_restaurant_clusters)


def test_hourly_busyness_matches_a_plain_groupby():
    clean = clean_pings("2026-10-01", 5000, seed=3)
    hourly = hex_hourly_busyness(clean, RES)
    reference = (
        clean.assign(
            h3_cell=cells_to_strings(cells_for(clean["courier_lat"], clean["courier_lon"], RES)),
            hour_start=clean["courier_location_timestamp"].dt.floor("h"),
            km=haversine_km(
                clean["courier_lat"],
                clean["courier_lon"],
                clean["restaurant_lat"],
                clean["restaurant_lon"],
            ),
        )
        .groupby(["h3_cell", "hour_start"])
        .agg(
            orders=("order_number", "nunique"),
            pings=("order_number", "size"),
            couriers=("courier_id", "nunique"),
            km=("km", "mean"),
        )
        .reset_index()
    )
    assert len(hourly) == len(reference)
    assert hourly["h3_cell"].tolist() == reference["h3_cell"].tolist()
    assert (hourly["hour_start"] == reference["hour_start"]).all()
    assert (
        hourly[["orders", "pings", "couriers"]].to_numpy().tolist()
        == reference[["orders", "pings", "couriers"]].to_numpy().tolist()
    )
    assert np.allclose(hourly["courier_restaurant_km_mean"], reference["km"])
    assert duplicate_hourly_keys(hourly) == 0
    assert duplicate_hourly_keys(pd.concat([hourly, hourly.head(2)])) == 4


def test_hourly_busyness_of_no_pings_is_empty():
    assert len(hex_hourly_busyness(clean_pings("2026-10-01", 10, 1).head(0), RES)) == 0


def test_restaurant_ids_are_stable_across_runs_and_day_order():
    days = ["2026-10-01", "2026-10-02", "2026-10-03"]
    sightings = {d: restaurant_sightings(clean_pings(d, 2000, seed=2)) for d in days}
    forward = restaurants_from_sightings(sightings, RES)
    backward = restaurants_from_sightings(dict(reversed(sightings.items())), RES)
    only_last = restaurants_from_sightings({days[-1]: sightings[days[-1]]}, RES)
    pd.testing.assert_frame_equal(forward, backward)
    assert forward["restaurant_id"].is_unique
    shared = forward.merge(only_last, on=["lat", "lon"], suffixes=("", "_last"))
    assert len(shared) == len(only_last)
    assert (shared["restaurant_id"] == shared["restaurant_id_last"]).all()
    assert (forward["first_seen"] == "2026-10-01").all()


def test_cluster_labels_do_not_depend_on_row_order():
    restaurants = restaurants_from_sightings(
        {"2026-10-01": restaurant_sightings(clean_pings("2026-10-01", 4000, 5))}, RES
    )
    first = cluster_restaurants(restaurants, 5).set_index("restaurant_id")["cluster"]
    shuffled = cluster_restaurants(restaurants.sample(frac=1, random_state=4), 5).set_index(
        "restaurant_id"
    )["cluster"]
    assert first.sort_index().tolist() == shuffled.sort_index().tolist()
    assert sorted(first.unique()) == [0, 1, 2, 3, 4]


def test_too_few_restaurants_for_clusters_is_a_clear_error():
    restaurants = restaurants_from_sightings(
        {"2026-10-01": restaurant_sightings(clean_pings("2026-10-01", 30, 5).head(2))}, RES
    )
    with pytest.raises(ValueError, match="need at least 5 restaurants"):
        cluster_restaurants(restaurants, 5)


def test_features_have_one_row_per_cell_and_hour_with_correct_lags(history):
    hourly, clusters = history
    features = busyness_features(hourly, TARGET_DAY, clusters, DEFAULT_CITY)
    assert features.columns[2:-3].tolist() == feature_columns(DEFAULT_CITY.n_restaurant_clusters)
    assert len(features) == features["h3_cell"].nunique() * 24
    assert not features.duplicated(["h3_cell", "hour_start"]).any()
    assert (features["hour_start"].dt.strftime("%Y-%m-%d") == TARGET_DAY).all()
    everything = pd.concat(hourly.values()).set_index(["h3_cell", "hour_start"])["orders"]

    day_start = pd.Timestamp(TARGET_DAY, tz="UTC")

    def actual(cells, hours):
        keys = pd.MultiIndex.from_arrays([cells, hours])
        return everything.reindex(keys).fillna(0).to_numpy()

    def known(cells, hours):
        """Day-ahead: hours of the target day itself are unknown to its features."""
        return np.where(hours < day_start, actual(cells, hours), np.nan)

    for lag in (1, 24, 168):
        expected = known(features["h3_cell"], features["hour_start"] - pd.Timedelta(hours=lag))
        assert np.array_equal(features[f"orders_lag_{lag}h"].to_numpy(), expected, equal_nan=True)
    assert features.loc[features["hour_start"].dt.hour >= 1, "orders_lag_1h"].isna().all()
    assert np.array_equal(
        features["orders"].to_numpy(), actual(features["h3_cell"], features["hour_start"])
    )
    with warnings.catch_warnings():  # hours 3..23 have no known hour in the window: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_3h = np.nanmean(
            [
                known(features["h3_cell"], features["hour_start"] - pd.Timedelta(hours=h))
                for h in (1, 2, 3)
            ],
            axis=0,
        )
    assert np.allclose(features["orders_mean_3h"], mean_3h, equal_nan=True)
    # Regina has no daylight saving: local hour = UTC - 6
    assert ((features["hour_start"].dt.hour - 6) % 24 == features["hour_of_day"]).all()


def test_hours_of_days_not_materialized_are_unknown_not_zero(history):
    hourly, clusters = history
    partial = {day: frame for day, frame in hourly.items() if day != "2026-10-09"}
    features = busyness_features(partial, TARGET_DAY, clusters, DEFAULT_CITY)
    # The day before is missing and the day itself is never an input: 1h and 24h lags unknown.
    assert features["orders_lag_1h"].isna().all()
    assert features["orders_lag_24h"].isna().all()
    assert features["orders_lag_168h"].notna().all()
    assert features["orders_mean_168h"].notna().all()


def test_the_four_week_same_hour_mean_counts_only_weeks_that_are_known(history):
    hourly, clusters = history
    two_weeks_before = (dt.date.fromisoformat(TARGET_DAY) - dt.timedelta(days=14)).isoformat()
    partial = {day: frame for day, frame in hourly.items() if day != two_weeks_before}
    features = busyness_features(partial, TARGET_DAY, clusters, DEFAULT_CITY)
    everything = pd.concat(partial.values()).set_index(["h3_cell", "hour_start"])["orders"]
    weeks = [
        everything.reindex(
            pd.MultiIndex.from_arrays(
                [features["h3_cell"], features["hour_start"] - pd.Timedelta(weeks=week)]
            )
        )
        .fillna(0)  # a known day without a row for the cell: zero orders
        .to_numpy()
        for week in (1, 3, 4)  # week 2 is missing: unknown, not zero
    ]
    assert (features["orders_same_hour_weeks_known"] == 3).all()
    assert np.allclose(features["orders_same_hour_mean_4w"], np.mean(weeks, axis=0))


def test_first_day_without_history_has_no_known_cells(history):
    hourly, clusters = history
    only_today = {TARGET_DAY: hourly[TARGET_DAY]}
    clusters_seen_today = clusters.assign(first_seen=TARGET_DAY)
    assert len(busyness_features(only_today, TARGET_DAY, clusters_seen_today, DEFAULT_CITY)) == 0


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(0, 23), seed=st.integers(0, 1000))
def test_features_never_look_at_the_current_or_a_future_hour(history, cut, seed):
    """Rewriting every hour from `cut` on changes no feature of hours up to `cut` (nor, the
    features being day-ahead, of any hour of the day)."""
    hourly, clusters = history
    cut_time = pd.Timestamp(TARGET_DAY, tz="UTC") + pd.Timedelta(hours=cut)
    rng = np.random.default_rng(seed)
    tampered = dict(hourly)
    today = hourly[TARGET_DAY].copy()
    future = today["hour_start"] >= cut_time
    for column in ("orders", "pings", "couriers"):
        today.loc[future, column] = rng.integers(0, 500, future.sum())
    today.loc[future, "courier_restaurant_km_mean"] = rng.uniform(0, 50, future.sum())
    tampered[TARGET_DAY] = today
    names = feature_columns(DEFAULT_CITY.n_restaurant_clusters)
    before = busyness_features(hourly, TARGET_DAY, clusters, DEFAULT_CITY)
    after = busyness_features(tampered, TARGET_DAY, clusters, DEFAULT_CITY)
    pd.testing.assert_frame_equal(before[names], after[names])


def test_a_partial_last_day_yields_no_targets_after_its_watermark_and_no_false_zeros():
    """The export ends at 04:00 UTC on its last day (orders created before then): that day is
    partial, its later hours are never targets, and the next day's lags into them are unknown."""
    config = SimulationConfig(
        days=10, pings_per_day=3_000, dirty_files=False, last_day_ends_at_hour=4
    )
    city = simulated_city(config)
    last = max(city.hourly)
    assert set(partial_days(city.hourly)) == {last}  # every other day is whole
    watermark = partial_days(city.hourly)[last]
    assert (
        pd.Timestamp(last, tz="UTC")
        < watermark
        <= pd.Timestamp(last, tz="UTC") + pd.Timedelta(hours=5)
    )  # the last orders' pings may run a few minutes past 04:00

    targets = city.features[last]
    assert len(targets) and (targets["hour_start"] < watermark).all()
    assert targets["hour_start"].max() == watermark - pd.Timedelta(hours=1)

    after = forecast_features(city.hourly, last, city.restaurant_clusters, DEFAULT_CITY)
    evening = after["hour_start"].dt.hour >= 6  # 24 h earlier: after the watermark
    assert after.loc[evening, "orders_lag_24h"].isna().all(), "unknown hours became zeros"
    morning = after["hour_start"] < watermark + pd.Timedelta(days=1) - pd.Timedelta(hours=2)
    assert after.loc[morning, "orders_lag_24h"].notna().all()


def quiet_night_days() -> dict[str, pd.DataFrame]:
    """Ten days of one cell active 00:00-19:00 UTC, nothing at night."""
    start = pd.Timestamp("2026-10-01", tz="UTC")
    return {
        (start + pd.Timedelta(days=d)).date().isoformat(): pd.DataFrame(
            {
                "h3_cell": ["a"] * 20,
                "hour_start": start + pd.Timedelta(days=d) + pd.to_timedelta(range(20), unit="h"),
            }
        )
        for d in range(10)
    }


def test_a_city_with_quiet_nights_keeps_its_quiet_hours_as_zeros():
    """Every day ends at 20:00 (nothing at night): that is the city's usual tail, not a gap."""
    hourly = quiet_night_days()
    assert partial_days(hourly) == {}
    shortened = dict(hourly)
    last = max(hourly)
    shortened[last] = hourly[last].head(3)  # ends at 03:00: far earlier than usual
    assert list(partial_days(shortened)) == [last]


def test_a_day_whose_files_landed_before_it_ended_is_unknown_from_the_landing_hour():
    """Quiet nights: every day ends at 20:00, so an export taken at 18:10 whose data stops at
    17:xx looks like a normal day by its tail alone; when its files landed says it is not."""
    hourly = quiet_night_days()
    last = max(hourly)
    hourly[last] = hourly[last].head(18)  # last active hour 17:00
    assert partial_days(hourly) == {}  # a 6 h tail is within the usual 4 h x 1.5
    landed = {last: pd.Timestamp(f"{last}T18:10:00Z")}
    assert partial_days(hourly, landed) == {last: pd.Timestamp(f"{last}T18:00:00Z")}
    # landed within the last active hour: unknown from the hour after it
    assert partial_days(hourly, {last: pd.Timestamp(f"{last}T17:40:00Z")}) == {
        last: pd.Timestamp(f"{last}T18:00:00Z")
    }
    # landed before pings it holds (a clock that is off, or files copied with an old mtime,
    # even from before the day): no evidence, the day is judged by its tail alone
    for early in (f"{last}T09:30:00Z", "2001-01-01T00:00:00Z"):
        assert partial_days(hourly, {last: pd.Timestamp(early)}) == {}
    shortened = dict(hourly, **{last: hourly[last].head(3)})  # its tail says partial
    assert partial_days(shortened, {last: pd.Timestamp("2001-01-01T00:00:00Z")}) == {
        last: pd.Timestamp(f"{last}T03:00:00Z")
    }
    # files that landed after the day ended change nothing, nor do days without data
    later = {
        last: pd.Timestamp(f"{last}T00:00:00Z") + pd.Timedelta(days=1),
        "2026-12-01": pd.Timestamp("2026-10-01", tz="UTC"),
    }
    assert partial_days(hourly, later) == {}


def test_the_expected_count_is_exact_when_every_cell_follows_the_city_profile(history):
    """Weeks that repeat exactly and cells that are multiples of one hourly profile: the cell's
    4-week level times the city's same-hour profile is the target itself."""
    _, clusters = history
    import h3

    centre = h3.latlng_to_cell(DEFAULT_CITY.center_lat, DEFAULT_CITY.center_lon, RES)
    cells = sorted(h3.grid_disk(centre, 1))[:2]
    hour_of_week = np.arange(168)
    profile = 1 + (hour_of_week % 24) + 3 * (hour_of_week // 24 == 5)  # Saturdays busier
    start = pd.Timestamp("2026-09-07", tz="UTC")  # a Monday
    hourly = {}
    for day_index in range(36):
        day_start = start + pd.Timedelta(days=day_index)
        hours = day_start + pd.to_timedelta(np.arange(24), unit="h")
        weekly = profile[(day_index % 7) * 24 + np.arange(24)]
        hourly[day_start.date().isoformat()] = pd.DataFrame(
            {
                "h3_cell": np.repeat(cells, 24),
                "hour_start": np.tile(hours, 2),
                "orders": np.concatenate([weekly, 3 * weekly]),
                "pings": np.concatenate([weekly, 3 * weekly]),
                "couriers": 1,
                "courier_restaurant_km_mean": 1.0,
                "courier_restaurant_deg_mean": 0.01,
            }
        )
    day = max(hourly)
    features = busyness_features(hourly, day, clusters, DEFAULT_CITY)
    mine = features.loc[features["h3_cell"].isin(cells)]
    assert len(mine) == 48
    assert np.allclose(mine["orders_expected_4w"], mine["orders"])
    assert np.allclose(mine["orders_same_hour_mean_4w"], mine["orders"])
