"""`geo-busyness run` and `geo-busyness cities` on a data engineer's own landing zone: an export
of several cities at once (one file set per day for all of them), routed row by row."""

import contextlib
import dataclasses
import datetime as dt
import io
import os

import dagster as dg
import pandas as pd
import pytest

from geo_busyness import cli
from geo_busyness.core.catalog import catalog_yaml
from geo_busyness.core.export import route_export
from geo_busyness.core.schema import QuarantineReason, read_landing_file
from geo_busyness.resources.io_manager import committed_path
from geo_busyness.resources.landing_zone import LandingZone
from geo_busyness.simulate import MULTI_CITIES, multi_city_configs, simulate_cities

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

START = dt.date(2026, 9, 14)
DAYS = 2
# The last city starts a day later in the catalog than its files do: its first day is left out.
LATE = dataclasses.replace(MULTI_CITIES[2], first_day=START + dt.timedelta(days=1))
CITIES = (*MULTI_CITIES[:2], LATE)


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-data")
    landing = root / "export"
    configs = multi_city_configs(
        pings_per_day=1500, start_date=START, days=DAYS, file_dirt=frozenset()
    )
    summary = simulate_cities(configs, "mixed", put=LandingZone(root=str(landing)).write)
    catalog = root / "cities.yaml"
    catalog.write_text(catalog_yaml(CITIES))
    return root, landing, catalog, summary


@pytest.fixture(scope="module")
def ran(landed, tmp_path_factory):
    root, landing, catalog, summary = landed
    data = root / "data"
    saved = dict(os.environ)
    os.environ.update({"GEO_BUSYNESS_DATA_DIR": str(data), "DAGSTER_HOME": str(root / "home")})
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            code = cli.main(
                ["run", "--landing", str(landing), "--cities", str(catalog), "--no-train"]
            )
            listed = cli.main(["cities", "--cities", str(catalog)])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert listed == 0
    return root, data, code, summary, output.getvalue()


def _frames(base, asset, days):
    paths = {day: committed_path(base, [asset], day) for day in days}
    return {day: pd.read_parquet(path.path) for day, path in paths.items() if path.exists()}


def test_every_row_of_every_file_lands_in_one_city_or_in_unrouted(ran):
    root, data, code, summary, _ = ran
    landing = root / "export"
    assert code == 0
    assets = data / "assets"
    days = [day.isoformat() for day in summary.days]
    taken: dict[str, int] = {}
    for city in CITIES:
        for day, raw in _frames(assets / city.key, "raw_courier_pings", days).items():
            clean, quarantined = (
                pd.read_parquet(committed_path(assets, [city.key, name], day).path)
                for name in ("clean_courier_pings", "quarantined_pings")
            )
            assert len(raw) == len(clean) + len(quarantined)  # per city and day
            for file, rows in raw["source_file"].value_counts().items():
                taken[file] = taken.get(file, 0) + int(rows)
    unrouted = pd.concat(_frames(assets, "unrouted_pings", days).values(), ignore_index=True)
    for file, rows in unrouted["source_file"].value_counts().items():
        taken[file] = taken.get(file, 0) + int(rows)
    # The rows the late city would take on its day before first_day are left out (they stay
    # in the landing zone, and the run says so); every other row is in exactly one place.
    expected = {}
    for f in summary.files:
        left_out = 0
        if f.day < LATE.first_day:
            frame = read_landing_file(f.key, (landing / f.key).read_bytes()).frame
            left_out = int((route_export(frame, CITIES) == CITIES.index(LATE)).sum())
        expected[f.key] = f.rows - left_out
    assert taken == {key: rows for key, rows in expected.items() if rows}


def test_strays_are_outside_the_service_area_and_city_rows_are_clean(ran):
    _, data, _, summary, _ = ran
    assets = data / "assets"
    days = [day.isoformat() for day in summary.days]
    unrouted = pd.concat(_frames(assets, "unrouted_pings", days).values(), ignore_index=True)
    outside = unrouted["reason"] == QuarantineReason.OUTSIDE_SERVICE_AREA.value
    assert outside.sum() == summary.stray_rows + sum(c.outside_rows for c in summary.cities)
    assert QuarantineReason.IMPLAUSIBLE_LOCATION.value in set(unrouted["reason"])
    for city in MULTI_CITIES[:2]:
        tally = summary.city(city.id)
        clean = sum(
            len(frame) for frame in _frames(assets / city.key, "clean_courier_pings", days).values()
        )
        assert clean == tally.rows - tally.dirty_rows - tally.outside_rows


def test_the_summary_names_each_city_and_what_was_left_out(ran):
    root, _, _, _, output = ran
    for city in CITIES:
        assert f"== {city.id} ==" in output
        assert f"  {city.id} " in output  # `geo-busyness cities`
    assert f"{LATE.id}: 1 day(s) left out, e.g. {START} is before {LATE.first_day}" in output
    assert "lower first_day of kolkata in the catalog" in output
    assert "quarantined in unrouted_pings" in output and "outside_service_area=" in output
    with dg.DagsterInstance.from_config(str(root / "home")) as instance:
        for city in CITIES:
            key = dg.AssetKey([city.key, "raw_courier_pings"])
            days = instance.get_materialized_partitions(key)
            assert days == (
                {(START + dt.timedelta(days=1)).isoformat()}
                if city is LATE
                else {(START + dt.timedelta(days=i)).isoformat() for i in range(DAYS)}
            )
