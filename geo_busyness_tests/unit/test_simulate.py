"""The simulator is the default data of every demo and test, so it must be deterministic,
shaped like a real city, and dirty in exactly the ways the data contract quarantines."""

from __future__ import annotations

import datetime
import io
import itertools

import numpy as np
import pandas as pd
import pytest

from geo_busyness.core.city import City
from geo_busyness.core.geo import haversine_km
from geo_busyness.core.schema import (
    RAW_COLUMNS,
    QuarantineReason,
    UnparseableFileError,
    ValidationResult,
    read_landing_file,
    read_raw_file,
    unparseable_file_rows,
    validate_pings,
)
from geo_busyness.simulate import (
    EXPORT_KINDS,
    LATIN1_SUFFIX,
    LEGACY_ROWS,
    MULTI_CITIES,
    ROW_DIRT,
    SCENARIOS,
    MultiCitySummary,
    SimulationConfig,
    city_landing_key,
    landing_key,
    multi_city_configs,
    simulate,
    simulate_cities,
    simulate_day,
)

pytestmark = pytest.mark.unit

START = datetime.date(2026, 10, 1)  # a Thursday
SMALL = SimulationConfig(start_date=START, days=3, pings_per_day=3_000)


def days(config: SimulationConfig) -> list[datetime.date]:
    return [config.start_date + datetime.timedelta(days=i) for i in range(config.days)]


def validate_files(files: dict[str, bytes], city: City, day: datetime.date) -> ValidationResult:
    """What the ingestion does with one day: read every file, quarantine unreadable ones (all
    their rows)."""
    frames = []
    for name, content in files.items():
        try:
            frames.append(read_raw_file(name, content))
        except UnparseableFileError as error:
            frames.append(unparseable_file_rows(name, content, str(error)))
    return validate_pings(pd.concat(frames, ignore_index=True), city, day.isoformat())


def pings(config: SimulationConfig) -> pd.DataFrame:
    """Rows of all part files of a clean configuration, with parsed ping times."""
    frames = [
        pd.read_csv(io.BytesIO(content), dtype={"order_number": str})
        for day in days(config)
        for name, content in simulate_day(config, day).items()
        if name.startswith("part-") and content
    ]
    frame = pd.concat(frames, ignore_index=True)
    frame["ping_time"] = pd.to_datetime(frame["courier_location_timestamp"], format="ISO8601")
    return frame


def clean_config(**changes) -> SimulationConfig:
    """A run without dirt unless asked for, so shapes and volumes are measured exactly."""
    return SimulationConfig(
        **{"start_date": START, "dirty_share": 0.0, "dirty_files": False, **changes}
    )


def test_same_config_and_day_give_identical_bytes_whatever_else_is_simulated():
    day = START + datetime.timedelta(days=2)
    first = simulate_day(SMALL, day)
    assert simulate_day(SMALL, day) == first
    other_run = SimulationConfig(
        start_date=day - datetime.timedelta(days=30), days=60, pings_per_day=3_000
    )
    assert simulate_day(other_run, day) == first
    landed: dict[str, bytes] = {}
    simulate(SMALL, landed.__setitem__, progress=False)
    assert {key: value for key, value in landed.items() if "dt=2026-10-03" in key} == {
        landing_key(day, name): content for name, content in first.items()
    }
    assert (
        simulate_day(SimulationConfig(start_date=START, pings_per_day=3_000, seed=8), day) != first
    )


def test_simulate_lands_every_file_under_its_day_and_summary_counts_clean_rows():
    landed: dict[str, bytes] = {}
    summary = simulate(SMALL, landed.__setitem__, progress=False)
    assert summary.days == 3
    assert list(summary.keys) == list(landed) and summary.files == len(landed)
    assert all(key.startswith("raw/dt=2026-10-0") and key.endswith(".csv") for key in landed)
    data_rows = sum(max(content.count(b"\n") - 1, 0) for content in landed.values())
    assert summary.rows == data_rows
    clean = quarantined = 0
    for day in days(SMALL):
        prefix = landing_key(day, "x")[:-1]
        files = {
            key[len(prefix) :]: value for key, value in landed.items() if key.startswith(prefix)
        }
        result = validate_files(files, SMALL.city, day)
        clean += len(result.clean)
        quarantined += len(result.quarantined)
    assert clean == summary.rows - summary.dirty_rows
    assert quarantined == summary.dirty_rows


def test_a_day_with_a_wrong_header_file_quarantines_exactly_its_dirty_rows():
    """Every source row is counted, those of a file quarantined whole included:
    rows in = clean + quarantined, and quarantined = the simulator's dirty rows."""
    config = SimulationConfig(start_date=START, days=1, pings_per_day=3_000)  # seed 7
    landed: dict[str, bytes] = {}
    summary = simulate(config, landed.__setitem__, progress=False)
    files = {key.rsplit("/", 1)[1]: content for key, content in landed.items()}
    assert "legacy-export.csv" in files  # this day and seed must keep covering the case
    legacy_rows = files["legacy-export.csv"].count(b"\n") - 1
    assert legacy_rows == LEGACY_ROWS
    result = validate_files(files, config.city, START)
    assert len(result.quarantined) == summary.dirty_rows
    assert len(result.clean) == summary.rows - summary.dirty_rows
    legacy = result.quarantined[result.quarantined["source_file"] == "legacy-export.csv"]
    assert legacy["source_row"].tolist() == list(range(LEGACY_ROWS))
    assert set(legacy["reason"]) == {QuarantineReason.UNPARSEABLE_FILE.value}
    assert legacy["detail"].str.contains("missing required columns").all()


def test_files_follow_the_raw_contract():
    content = simulate_day(SMALL, START)["part-000.csv"]
    lines = content.decode().splitlines()
    assert lines[0] == ",".join(RAW_COLUMNS)
    fields = lines[1].split(",")
    assert len(fields) == len(RAW_COLUMNS)
    assert fields[2].startswith("2026-10-01T") and fields[2].endswith("Z") and len(fields[2]) == 27
    assert all(len(value.split(".")[1]) == 6 for value in fields[3:5] + fields[6:8])


@pytest.mark.parametrize(
    "city",
    [
        SimulationConfig().city,
        City(name="Accra", center_lat=5.6037, center_lon=-0.187, timezone="Africa/Accra"),
        City(name="Near null island", center_lat=0.3, center_lon=0.4, timezone="UTC"),
    ],
    ids=["regina", "near-meridian", "near-equator-and-meridian"],
)
def test_every_row_level_reason_appears_and_nothing_else(city):
    config = SimulationConfig(city=city, start_date=START, pings_per_day=4_000, dirty_share=0.05)
    seen: dict[str, int] = {}
    for day in days(config):
        result = validate_files(simulate_day(config, day), city, day)
        for reason, count in result.reason_counts().items():
            seen[reason] = seen.get(reason, 0) + count
    assert all(seen[reason.value] > 0 for reason in ROW_DIRT), seen
    assert seen[QuarantineReason.OUTSIDE_PARTITION_DAY.value] == 0
    assert set(ROW_DIRT) | {QuarantineReason.UNPARSEABLE_FILE} >= {r for r, n in seen.items() if n}


def test_dirty_share_matches_config():
    config = clean_config(pings_per_day=20_000, dirty_share=0.05)
    result = validate_files(simulate_day(config, START), config.city, START)
    share = len(result.quarantined) / (len(result.quarantined) + len(result.clean))
    assert share == pytest.approx(0.05, abs=0.006)
    counts = result.reason_counts()
    assert min(counts[reason.value] for reason in ROW_DIRT) > 0.5 * len(result.quarantined) / len(
        ROW_DIRT
    )


def test_pings_per_day_averages_the_configured_volume():
    config = clean_config(days=14, pings_per_day=5_000)
    assert len(pings(config)) / config.days == pytest.approx(5_000, rel=0.05)


def test_file_level_dirt_happens_on_some_days_and_is_refused():
    config = SimulationConfig(start_date=START, days=12, pings_per_day=600, dirty_share=0.0)
    seen = {"empty": 0, "legacy": 0, "redelivered": 0}
    for day in days(config):
        files = simulate_day(config, day)
        parts = {name: value for name, value in files.items() if name.startswith("part-") and value}
        assert len(parts) == config.files_per_day
        clean_parts = validate_files(parts, config.city, day)
        assert len(clean_parts.quarantined) == 0
        result = validate_files(files, config.city, day)
        assert len(result.clean) == len(clean_parts.clean)  # nothing extra gets in
        for name, content in files.items():
            if content == b"":
                seen["empty"] += 1
                assert len(read_raw_file(name, content)) == 0
            elif name == "legacy-export.csv":
                seen["legacy"] += 1
                with pytest.raises(UnparseableFileError, match="missing required columns"):
                    read_raw_file(name, content)
            elif name.startswith("redelivered-"):
                seen["redelivered"] += 1
                assert content == files[name.removeprefix("redelivered-")]
                rows = content.count(b"\n") - 1
                assert result.reason_counts()[QuarantineReason.DUPLICATE.value] == rows
    assert all(1 <= count <= 10 for count in seen.values()), seen
    plain = SimulationConfig(
        start_date=START, days=12, pings_per_day=600, dirty_share=0.0, dirty_files=False
    )
    assert set(simulate_day(plain, START)) == {"part-000.csv", "part-001.csv", "part-002.csv"}
    assert all(
        simulate_day(config, START)[name] == v for name, v in simulate_day(plain, START).items()
    )


def test_pings_belong_to_their_utc_day():
    config = clean_config(days=2, pings_per_day=5_000)
    frame = pings(config)
    on_day = frame.groupby(frame["ping_time"].dt.strftime("%Y-%m-%d")).size()
    assert list(on_day.index) == ["2026-10-01", "2026-10-02"]
    created = pd.to_datetime(frame["order_created_timestamp"], format="ISO8601")
    lag = (frame["ping_time"] - created).dt.total_seconds() / 60
    assert lag.between(0, 20).all() and 5 < lag.median() < 15


def local_hour_profile(config: SimulationConfig, weekend: bool) -> pd.Series:
    frame = pings(config)
    local = frame["ping_time"].dt.tz_convert(config.city.timezone)
    keep = (local.dt.weekday >= 5) == weekend
    return (
        local[keep].dt.hour.value_counts().reindex(range(24), fill_value=0)
        / local[keep].dt.date.nunique()
    )


def test_local_time_has_lunch_and_bigger_dinner_peaks_and_quiet_nights():
    profile = local_hour_profile(clean_config(days=7, pings_per_day=10_000), weekend=False)
    assert profile.iloc[11:14].idxmax() == 12
    assert profile[12] > 2 * profile[9] and profile[12] > 2 * profile[15]
    assert profile.iloc[17:20].max() > 1.1 * profile[12]
    assert profile.iloc[1:6].sum() < 0.01 * profile.sum()


def test_weekend_has_weaker_lunch_stronger_dinner_and_more_volume():
    config = clean_config(days=14, pings_per_day=10_000)
    weekday, weekend = local_hour_profile(config, False), local_hour_profile(config, True)
    assert weekend[12] < weekday[12]
    assert weekend.iloc[17:20].sum() > 1.3 * weekday.iloc[17:20].sum()
    assert 1.1 < weekend.sum() / weekday.sum() < 1.35


def test_daily_shape_follows_local_clock_across_a_dst_change():
    city = City(name="Amsterdam", center_lat=52.37, center_lon=4.89, timezone="Europe/Amsterdam")
    for start in (datetime.date(2026, 10, 20), datetime.date(2026, 10, 27)):  # DST ends Oct 25
        profile = local_hour_profile(
            clean_config(city=city, start_date=start, days=3), weekend=False
        )
        assert profile.iloc[11:14].idxmax() == 12 and profile.idxmax() in (17, 18, 19)


def restaurant_pairs(config: SimulationConfig, day: datetime.date) -> pd.Series:
    frame = pd.concat(
        pd.read_csv(io.BytesIO(content), dtype=str)
        for name, content in simulate_day(config, day).items()
        if name.startswith("part-")
    )
    return frame["restaurant_lat"] + "," + frame["restaurant_lon"]


def test_restaurant_coordinates_repeat_exactly_across_days():
    config = clean_config(days=3, pings_per_day=10_000)
    daily = [set(restaurant_pairs(config, day)) for day in days(config)]
    union = set().union(*daily)
    assert len(union) <= config.n_restaurants
    assert all(len(pairs) >= 0.8 * config.n_restaurants for pairs in daily)


def test_another_draw_keeps_the_world_and_day_volume_and_redraws_the_orders():
    """Draws are what the model-quality ceiling is measured on: the same restaurants and
    day volume (only Poisson noise apart), other orders and pings; draw 0 is the default."""
    configs = [clean_config(days=1, pings_per_day=50_000, draw=k) for k in range(4)]
    assert simulate_day(configs[0], START) == simulate_day(
        clean_config(days=1, pings_per_day=50_000), START
    )
    frames = [pings(config) for config in configs]
    restaurants = set().union(*(restaurant_pairs(config, START) for config in configs))
    assert len(restaurants) <= configs[0].n_restaurants
    times = [frame["ping_time"].to_numpy() for frame in frames]
    assert all(len(a) != len(b) or (a != b).any() for a, b in itertools.combinations(times, 2))
    orders = np.array([frame["order_number"].nunique() for frame in frames])  # ~14,000
    # Poisson noise is 0.85% of that; a redrawn day volume would differ by ~11% (sd)
    assert orders.max() / orders.min() < 1.04, orders


def test_new_district_takes_a_share_of_demand_in_a_new_place_from_its_start_day():
    switch = START + datetime.timedelta(days=2)
    baseline = clean_config(pings_per_day=5_000)
    district = clean_config(pings_per_day=5_000, scenario="new_district", scenario_start=switch)
    before = START + datetime.timedelta(days=1)
    assert simulate_day(district, before) == simulate_day(baseline, before)

    known = set().union(
        *(set(restaurant_pairs(baseline, START + datetime.timedelta(days=i))) for i in range(4))
    )
    after = restaurant_pairs(district, switch)
    new = after[~after.isin(known)]
    assert 0.28 < len(new) / len(after) < 0.42
    assert len(after) > 1.1 * len(restaurant_pairs(baseline, switch))

    new_lat = new.str.split(",").str[0].astype(float).to_numpy()
    new_lon = new.str.split(",").str[1].astype(float).to_numpy()
    old = pd.Series(sorted(known))
    old_lat = old.str.split(",").str[0].astype(float).to_numpy()
    old_lon = old.str.split(",").str[1].astype(float).to_numpy()
    centre_lat, centre_lon = np.median(new_lat), np.median(new_lon)
    assert np.median(haversine_km(new_lat, new_lon, centre_lat, centre_lon)) < 1.5
    assert (haversine_km(old_lat, old_lon, centre_lat, centre_lon) < 1.0).sum() <= 3


def test_sensor_glitch_raises_the_quarantine_share_and_jitters_couriers():
    day = START + datetime.timedelta(days=1)
    shares, far = {}, {}
    for scenario in ("baseline", "sensor_glitch"):
        config = clean_config(pings_per_day=8_000, dirty_share=0.02, scenario=scenario)
        result = validate_files(simulate_day(config, day), config.city, day)
        shares[scenario] = len(result.quarantined) / (len(result.quarantined) + len(result.clean))
        clean = result.clean
        km = haversine_km(
            clean["courier_lat"],
            clean["courier_lon"],
            clean["restaurant_lat"],
            clean["restaurant_lon"],
        )
        far[scenario] = float((km > 1.0).mean())
    assert shares["baseline"] == pytest.approx(0.02, abs=0.01)
    assert shares["sensor_glitch"] == pytest.approx(0.22, abs=0.03)
    assert far["baseline"] == 0.0 and 0.08 < far["sensor_glitch"] < 0.16


def test_scenario_names_are_listed():
    assert SCENARIOS == ("baseline", "new_district", "sensor_glitch")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scenario": "earthquake"}, "valid scenarios: baseline, new_district, sensor_glitch"),
        ({"days": 0}, "days must be an integer >= 1"),
        ({"pings_per_day": 0}, "pings_per_day must be an integer >= 1"),
        ({"pings_per_day": 10_000_000}, "pings_per_day must be at most"),
        ({"dirty_share": 0.5}, r"dirty_share must be in \[0, 0.5\)"),
        ({"dirty_share": -0.1}, "dirty_share"),
        ({"files_per_day": 0}, "files_per_day"),
        ({"n_restaurants": 0}, "n_restaurants"),
        ({"n_couriers": 0}, "n_couriers"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"draw": -1}, "draw must be an integer >= 0"),
        ({"start_date": "2026-10-01"}, "start_date must be a datetime.date"),
        ({"scenario_start": "2026-10-01"}, "scenario_start must be a datetime.date"),
        ({"city": City(timezone="Mars/Olympus_Mons")}, "not a known time zone"),
        ({"city": City(n_restaurant_clusters=0)}, "n_restaurant_clusters"),
        ({"export_files": frozenset({"xlsx"})}, "export_files must be a subset of"),
        ({"export_files": frozenset(EXPORT_KINDS[:4])}, "need files_per_day >= 4, got 3"),
    ],
)
def test_bad_config_raises_a_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**changes)


def test_landing_key_rejects_paths():
    assert landing_key(START, "part-000.csv") == "raw/dt=2026-10-01/part-000.csv"
    with pytest.raises(ValueError, match="plain non-empty name"):
        landing_key(START, "a/b.csv")


# --- Part files written as other exports write them (issue 14, item 7) -----------------------

EXPORT_NAME = {
    "gzip": "part-000.csv.gz",
    "zip": "part-000.csv.zip",
    "tsv": "part-000.tsv",
    "upper_case_extension": "part-000.CSV",
}
EXPORT_FORMAT = {  # what read_landing_file reports for the rewritten part
    "gzip": {"compression": "gzip"},
    "zip": {"compression": "zip"},
    "tsv": {"delimiter": "\t"},
    "semicolon": {"delimiter": ";"},
    "excel": {"delimiter": ";", "encoding": "utf-8-sig"},
    "tab_in_csv": {"delimiter": "\t"},
    "latin1": {"encoding": "utf-8+cp1252", "fallback_rows": 1},
    "utf16": {"encoding": "utf-16-le"},
    "epoch": {"encoding": "utf-8"},
}


def clean_without_source_file(result: ValidationResult) -> pd.DataFrame:
    return result.clean.drop(columns="source_file").reset_index(drop=True)


@pytest.mark.parametrize("kind", EXPORT_KINDS)
def test_each_export_kind_reads_to_the_rows_of_the_plain_part(kind):
    day = START + datetime.timedelta(days=1)
    plain = SimulationConfig(start_date=START, pings_per_day=2_000, dirty_share=0.05)
    export = SimulationConfig(
        start_date=START, pings_per_day=2_000, dirty_share=0.05, export_files=frozenset({kind})
    )
    plain_files, export_files = simulate_day(plain, day), simulate_day(export, day)
    name = EXPORT_NAME.get(kind, "part-000.csv")
    assert name in export_files
    assert {n: c for n, c in export_files.items() if n != name and "redelivered" not in n} == {
        n: c for n, c in plain_files.items() if n != "part-000.csv" and "redelivered" not in n
    }
    assert (name, export_files[name]) != ("part-000.csv", plain_files["part-000.csv"])
    read = read_landing_file(name, export_files[name])
    assert read.error is None
    assert {key: getattr(read.format, key) for key in EXPORT_FORMAT.get(kind, {})} == (
        EXPORT_FORMAT.get(kind, {})
    )
    expected = validate_files(plain_files, plain.city, day)
    result = validate_files(export_files, export.city, day)
    assert result.reason_counts() == expected.reason_counts()
    assert (
        result.reason_counts()[QuarantineReason.UNPARSEABLE_FILE.value]
        == (expected.reason_counts()[QuarantineReason.UNPARSEABLE_FILE.value])
    )
    clean, plain_clean = clean_without_source_file(result), clean_without_source_file(expected)
    if kind == "latin1":  # one courier id carries the non-UTF-8 byte, read as cp1252
        changed = clean["courier_id"] != plain_clean["courier_id"]
        assert changed.sum() == 1
        assert clean["courier_id"][changed].str.endswith(LATIN1_SUFFIX).all()
        clean.loc[changed, "courier_id"] = plain_clean.loc[changed, "courier_id"]
    pd.testing.assert_frame_equal(clean, plain_clean)


def test_every_export_kind_at_once_keeps_the_summary_exact():
    kinds = frozenset(EXPORT_KINDS)
    config = SimulationConfig(
        start_date=START, days=2, pings_per_day=3_000, files_per_day=len(kinds), export_files=kinds
    )
    plain = SimulationConfig(
        start_date=START, days=2, pings_per_day=3_000, files_per_day=len(kinds)
    )
    landed: dict[str, bytes] = {}
    summary = simulate(config, landed.__setitem__, progress=False)
    plain_summary = simulate(plain, {}.__setitem__, progress=False)
    assert (summary.rows, summary.dirty_rows) == (plain_summary.rows, plain_summary.dirty_rows)
    clean = quarantined = 0
    for day in days(config):
        prefix = landing_key(day, "x")[:-1]
        files = {k[len(prefix) :]: v for k, v in landed.items() if k.startswith(prefix)}
        result = validate_files(files, config.city, day)
        clean += len(result.clean)
        quarantined += len(result.quarantined)
    assert clean == summary.rows - summary.dirty_rows
    assert quarantined == summary.dirty_rows


def test_export_files_are_off_by_default():
    assert SimulationConfig().export_files == frozenset()
    files = simulate_day(SimulationConfig(start_date=START, pings_per_day=600), START)
    assert all(name.endswith(".csv") for name in files)
    assert all(not content.startswith(b"\xef\xbb\xbf") for content in files.values())


# --- Several cities at once: per-city folders or one mixed export ----------------------------

MULTI = multi_city_configs(start_date=START, days=2, pings_per_day=2_000, dirty_share=0.05)


def land_cities(configs, layout, **options) -> tuple[MultiCitySummary, dict[str, bytes]]:
    landed: dict[str, bytes] = {}
    summary = simulate_cities(configs, layout, landed.__setitem__, **options)
    assert list(summary.keys) == list(landed)
    return summary, landed


def route(cities, frame: pd.DataFrame) -> np.ndarray:
    """What a router does with each row by its courier position: the index of the city whose
    service area holds it, -1 plausible but in no area, -2 implausible or not a coordinate."""
    lat = pd.to_numeric(frame["courier_lat"].str.strip(), errors="coerce").to_numpy(float)
    lon = pd.to_numeric(frame["courier_lon"].str.strip(), errors="coerce").to_numpy(float)
    coordinate = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    coordinate &= (lat != 0) | (lon != 0)
    routed = np.full(len(frame), -2)
    plausible = np.zeros(len(frame), bool)
    for i, city in enumerate(cities):
        km = haversine_km(lat, lon, city.center_lat, city.center_lon)
        plausible |= coordinate & (km <= city.implausible_distance_km)
        routed[coordinate & (km <= city.service_radius_km)] = i
    routed[(routed == -2) & plausible] = -1
    return routed


def read_text(content: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)


def test_multi_cities_differ_in_clock_size_and_density_and_regina_is_the_default():
    assert MULTI_CITIES[0] == City() and MULTI[0] == SimulationConfig(
        start_date=START, days=2, pings_per_day=2_000, dirty_share=0.05
    )
    assert {c.timezone for c in MULTI_CITIES} == {
        "America/Regina",
        "America/New_York",
        "Asia/Kolkata",
    }
    assert sorted(c.service_radius_km for c in MULTI_CITIES) == [5.0, 8.0, 12.0]
    assert sorted(c.h3_resolution for c in MULTI_CITIES) == [7, 8, 8]
    assert len({c.n_restaurants for c in MULTI}) == 3 and len({c.id for c in MULTI_CITIES}) == 3
    for a in MULTI_CITIES:
        for b in MULTI_CITIES:
            if a != b:
                km = haversine_km(a.center_lat, a.center_lon, b.center_lat, b.center_lon)
                assert km > 1000


def test_city_landing_key():
    assert city_landing_key("new-york", START, "part-000.csv") == (
        "raw/city=new-york/dt=2026-10-01/part-000.csv"
    )
    with pytest.raises(ValueError, match="plain non-empty name"):
        city_landing_key("regina", START, "a/b.csv")
    with pytest.raises(ValueError, match="lowercase slug"):
        city_landing_key("New York", START, "part-000.csv")


def test_per_city_layout_lands_each_city_as_simulate_would_under_its_folder():
    summary, landed = land_cities(MULTI, "per_city")
    assert summary.stray_rows == summary.unreadable_rows == 0
    expected = {
        city_landing_key(config.city.id, day, name): content
        for day in days(MULTI[0])
        for config in MULTI
        for name, content in simulate_day(config, day).items()
    }
    assert landed == expected
    for config, tally in zip(MULTI, summary.cities, strict=True):
        alone = simulate(config, {}.__setitem__, progress=False)
        assert (tally.city_id, tally.rows, tally.dirty_rows) == (
            config.city.id,
            alone.rows,
            alone.dirty_rows,
        )
        assert tally.outside_rows == 0 and tally.days == tuple(days(config))
    for file in summary.files:
        assert file.key.startswith(f"raw/city={file.city_id}/dt={file.day.isoformat()}/")
        assert file.rows == max(landed[file.key].count(b"\n") - 1, 0)
        assert file.city_rows == {file.city_id: file.rows}
    assert summary.rows == sum(file.rows for file in summary.files)
    assert summary.dirty_rows == sum(t.dirty_rows for t in summary.cities)
    # per city, the ingestion keeps exactly rows - dirty_rows
    for config, tally in zip(MULTI, summary.cities, strict=True):
        clean = 0
        for day in days(config):
            prefix = city_landing_key(config.city.id, day, "x")[:-1]
            files = {k[len(prefix) :]: v for k, v in landed.items() if k.startswith(prefix)}
            clean += len(validate_files(files, config.city, day).clean)
        assert clean == tally.rows - tally.dirty_rows


def test_mixed_export_holds_every_city_row_and_the_strays_ordered_by_ping_time():
    summary, landed = land_cities(MULTI, "mixed")
    _, per_city = land_cities(MULTI, "per_city")
    cities = [config.city for config in MULTI]
    assert all(key.startswith("raw/dt=2026-10-0") for key in landed)
    for day in days(MULTI[0]):
        prefix = landing_key(day, "x")[:-1]
        parts = sorted(k for k in landed if k.startswith(prefix + "part-") and landed[k])
        assert len(parts) == 3
        mixed = pd.concat([read_text(landed[k]) for k in parts], ignore_index=True)
        stamps = pd.to_datetime(
            mixed["courier_location_timestamp"], format="ISO8601", errors="coerce"
        ).dropna()
        assert stamps.is_monotonic_increasing
        city_parts = pd.concat(
            [
                read_text(content)
                for key, content in per_city.items()
                if f"/dt={day.isoformat()}/part-" in key and content
            ],
            ignore_index=True,
        )
        routed = route(cities, mixed)
        strays = mixed[routed == -1]
        lines = mixed.apply(tuple, axis=1).value_counts()
        expected = pd.concat([city_parts, strays]).apply(tuple, axis=1).value_counts()
        pd.testing.assert_series_equal(lines.sort_index(), expected.sort_index())
        day_files = [f for f in summary.files if f.day == day and f.key in parts]
        assert sum(f.stray_rows for f in day_files) == len(strays) > 0
        assert len(strays) == round(0.01 * len(city_parts))
        # every city's rows are there, and routed back to it
        for i, city in enumerate(cities):
            own = city_landing_key(city.id, day, "part-")
            rows = sum(
                read_text(c).shape[0] for k, c in per_city.items() if k.startswith(own) and c
            )
            assert sum(f.city_rows[city.id] for f in day_files) == rows
            assert (routed == i).sum() > 0


def test_strays_lie_outside_every_service_area_but_near_a_city():
    summary, landed = land_cities(MULTI, "mixed", stray_share=0.05)
    cities = [config.city for config in MULTI]
    frame = pd.concat(
        [read_text(landed[f.key]) for f in summary.files if f.readable and f.rows],
        ignore_index=True,
    )
    routed = route(cities, frame)
    strays = frame[routed == -1]
    assert len(strays) == summary.stray_rows > 0  # baseline: no valid ping leaves its area
    lat = strays["courier_lat"].astype(float).to_numpy()
    lon = strays["courier_lon"].astype(float).to_numpy()
    ratio = np.min(
        [haversine_km(lat, lon, c.center_lat, c.center_lon) / c.service_radius_km for c in cities],
        axis=0,
    )
    assert (ratio >= 1.5 * 0.999).all() and (ratio <= 3.0 * 1.001).all()  # flat-earth moves
    near = {c.id: 0 for c in cities}
    for c in cities:
        km = haversine_km(lat, lon, c.center_lat, c.center_lon)
        assert ((km > c.service_radius_km) | (km > 1000)).all()
        near[c.id] = int((km < c.implausible_distance_km).sum())
    assert sum(near.values()) == len(strays) and all(near.values())
    # strays are well-formed pings: nothing but their place is wrong (re-delivered copies aside)
    strays = strays[~strays.duplicated()]
    result = validate_pings(
        pd.concat([strays.assign(file_error=None, source_file="s", source_row=range(len(strays)))]),
        City(center_lat=0.0, center_lon=0.0, implausible_distance_km=20_000.0),
    )
    assert len(result.quarantined) == 0


@pytest.mark.parametrize("scenario", ["baseline", "sensor_glitch"])
def test_mixed_bookkeeping_adds_up_exactly_when_routed_row_by_row(scenario):
    configs = list(MULTI)
    configs[0] = SimulationConfig(  # Regina's jitter pushes some valid pings out of its area
        start_date=START, days=2, pings_per_day=2_000, dirty_share=0.05, scenario=scenario
    )
    configs[2] = SimulationConfig(**{**vars(MULTI[2]), "file_dirt": frozenset({"legacy"})})
    summary, landed = land_cities(configs, "mixed")
    cities = [config.city for config in configs]
    assert summary.rows == sum(c.rows for c in summary.cities) + summary.stray_rows + (
        summary.unreadable_rows
    )
    assert summary.unreadable_rows == 2 * LEGACY_ROWS  # the legacy file on both days
    assert summary.dirty_rows == sum(c.dirty_rows for c in summary.cities) + 2 * LEGACY_ROWS
    assert (sum(c.outside_rows for c in summary.cities) > 0) == (scenario == "sensor_glitch")
    for tally in summary.cities:
        assert tally.rows == sum(f.city_rows.get(tally.city_id, 0) for f in summary.files)
    assert sum(f.dirty_rows for f in summary.files) == sum(c.dirty_rows for c in summary.cities)
    clean = {c.id: 0 for c in cities}
    for file in summary.files:
        content = landed[file.key]
        assert file.rows == max(content.count(b"\n") - 1, 0)
        if file.readable:
            assert file.rows == sum(file.city_rows.values()) + file.stray_rows
        else:
            assert file.city_rows == {} and file.key.endswith("legacy-export.csv")
            with pytest.raises(UnparseableFileError):
                read_raw_file("legacy-export.csv", content)
    for day in days(configs[0]):
        prefix = landing_key(day, "x")[:-1]
        frames = [
            read_raw_file(f.key[len(prefix) :], landed[f.key])
            for f in summary.files
            if f.day == day and f.readable
        ]
        raw = pd.concat(frames, ignore_index=True)
        routed = route(cities, raw)
        for i, city in enumerate(cities):
            mine = raw[routed == i].reset_index(drop=True)
            clean[city.id] += len(validate_pings(mine, city, day.isoformat()).clean)
    for tally in summary.cities:
        assert clean[tally.city_id] == tally.rows - tally.dirty_rows - tally.outside_rows
    assert sum(clean.values()) == (
        summary.rows
        - summary.dirty_rows
        - summary.stray_rows
        - sum(c.outside_rows for c in summary.cities)
    )


def test_simulate_cities_is_deterministic():
    for layout in ("per_city", "mixed"):
        first = land_cities(MULTI, layout)
        assert land_cities(MULTI, layout) == first
    other = [SimulationConfig(**{**vars(c), "seed": 8}) for c in MULTI]
    assert land_cities(other, "mixed")[1] != land_cities(MULTI, "mixed")[1]


def test_cities_with_different_day_ranges():
    later = START + datetime.timedelta(days=2)
    configs = [
        SimulationConfig(**{**vars(MULTI[0]), "days": 4}),
        SimulationConfig(**{**vars(MULTI[1]), "start_date": later, "days": 3}),
        SimulationConfig(**{**vars(MULTI[2]), "start_date": START + datetime.timedelta(days=1)}),
    ]
    summary, landed = land_cities(configs, "per_city")
    assert all(key.startswith("raw/city=") for key in landed)
    assert summary.days == tuple(START + datetime.timedelta(days=i) for i in range(5))
    have = {(f.city_id, f.day) for f in summary.files}
    assert have == {(c.city.id, day) for c in configs for day in days(c)}
    summary, _ = land_cities(configs, "mixed")
    assert len(summary.days) == 5
    for day in summary.days:
        present = {c.city.id for c in configs if day in days(c)}
        readable = [f for f in summary.files if f.day == day and f.readable]
        assert {city for f in readable for city, n in f.city_rows.items() if n} == present
        assert all(set(f.city_rows) == present for f in readable)
    for config in configs:
        tally = summary.city(config.city.id)
        assert tally.days == tuple(days(config))


def test_local_daily_shape_survives_the_mixed_export():
    configs = multi_city_configs(
        start_date=datetime.date(2026, 10, 5),
        days=3,
        pings_per_day=4_000,
        dirty_share=0.0,
        dirty_files=False,
    )  # a Monday to Wednesday
    _, landed = land_cities(configs, "mixed")
    frame = pd.concat([read_text(content) for content in landed.values()], ignore_index=True)
    routed = route([c.city for c in configs], frame)
    for i, config in enumerate(configs):
        stamps = pd.to_datetime(frame["courier_location_timestamp"][routed == i], format="ISO8601")
        local = stamps.dt.tz_convert(config.city.timezone)
        hours = local.dt.hour.value_counts().reindex(range(24), fill_value=0)
        assert hours.iloc[17:21].sum() > 10 * hours.iloc[2:6].sum(), config.city.id
        assert hours.iloc[11:14].idxmax() == 12, config.city.id


@pytest.mark.parametrize(
    ("configs", "options", "message"),
    [
        ([MULTI[0], MULTI[0]], {}, "city ids must be unique"),
        ([], {}, "at least one config"),
        (MULTI, {"layout": "by_city"}, "layout must be one of"),
        (MULTI, {"stray_share": 0.6}, "stray_share"),
        (
            [SimulationConfig(**{**vars(MULTI[0]), "export_files": frozenset({"gzip"})})],
            {},
            "export_files are per-city only",
        ),
        (
            [MULTI[0], SimulationConfig(city=City(id="near", center_lat=50.5))],
            {},
            "overlap",
        ),
    ],
)
def test_simulate_cities_rejects_bad_input(configs, options, message):
    with pytest.raises(ValueError, match=message):
        simulate_cities(configs, options.pop("layout", "mixed"), {}.__setitem__, **options)
