"""Deterministic synthetic city: the courier-ping files a food-delivery app would land each day.

This is the platform's default data, so demos and tests run without real data. It is realistic
where the pipeline cares: restaurants cluster in neighbourhoods and keep exact coordinates
from day to day, demand follows the local-time lunch and dinner peaks and the weekend, couriers
ping near the restaurant minutes after the order, and files are dirty in every way the
contract (``geo_busyness.core.schema``) quarantines. Scenarios shift the data from a given day
on, to exercise the data-drift and data-quality monitoring. On request (``export_files``, off by
default) part files are written as other exports write them: compressed, tab- or
semicolon-separated, an Excel export, Latin-1 or UTF-16 text, epoch timestamps.

One UTC day is generated at a time from its own random stream, fully vectorized, so a day's
bytes depend only on the configuration and the day, never on which other days are simulated.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import io
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tqdm import tqdm

from geo_busyness.core.city import CITY_ID, DEFAULT_CITY, City
from geo_busyness.core.features import (
    busyness_features,
    cluster_restaurants,
    hex_hourly_busyness,
    restaurant_sightings,
    restaurants_from_sightings,
)
from geo_busyness.core.geo import EARTH_RADIUS_KM, haversine_km
from geo_busyness.core.schema import (
    COORDINATE_COLUMNS,
    RAW_COLUMNS,
    TIMESTAMP_COLUMNS,
    QuarantineReason,
    UnparseableFileError,
    read_raw_file,
    validate_pings,
)

SCENARIOS: tuple[str, ...] = ("baseline", "new_district", "sensor_glitch")

# Row-level dirt: one kind per dirty row, each producing exactly its quarantine reason.
# OUTSIDE_PARTITION_DAY is left out on purpose: every ping lands in its own UTC day.
ROW_DIRT: tuple[QuarantineReason, ...] = (
    QuarantineReason.MISSING_VALUE,
    QuarantineReason.UNPARSEABLE_TIMESTAMP,
    QuarantineReason.UNPARSEABLE_NUMBER,
    QuarantineReason.OUT_OF_RANGE,
    QuarantineReason.NULL_ISLAND,
    QuarantineReason.IMPLAUSIBLE_LOCATION,
    QuarantineReason.ORDER_AFTER_PING,
    QuarantineReason.DUPLICATE,
)
MISSING_TEXT = ("", "NaN ", "null", "N/A", "nan")
BAD_TIMESTAMP_TEXT = ("not-a-time", "2026-13-45T99:00:00Z", "yesterday 7pm")
BAD_NUMBER_TEXT = ("abc", "12.34.56", "lat?")
LEGACY_HEADER = (
    "rider_id",
    "order_id",
    "ping_time",
    "lat",
    "lng",
    "created_at",
    "store_lat",
    "store_lng",
)

KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180
US_PER_HOUR = 3_600_000_000
MAX_PINGS_PER_ORDER = 6  # pings per order are uniform on 1..6
MEAN_PINGS_PER_ORDER = (1 + MAX_PINGS_PER_ORDER) / 2
PING_WINDOW_US = 20 * 60 * 1_000_000  # pings fall within 20 minutes of the order
WEEKEND_VOLUME = 1.2  # a weekend day has 20% more orders than a weekday
DAY_NOISE_SIGMA = 0.08
ORDER_NUMBER_STRIDE = 1_000_000_000  # order number = day ordinal * stride + index in the day
MAX_PINGS_PER_DAY = 5_000_000  # keeps one day's CSV text well inside Arrow's 2 GiB string limit
NEW_DISTRICT_SHARE = 0.35
NEW_DISTRICT_VOLUME = 1.25
GLITCH_SHARE = 0.30  # of pings, split evenly: null island, swapped signs, jitter >= 1 km
FILE_DIRT_PROBABILITY = 1 / 3
FILE_DIRT_KINDS = ("empty", "legacy", "redelivered")
LEGACY_ROWS = 100
IN_AREA_MARGIN_KM = 0.01  # valid courier pings stay this far inside the service radius
# Part files written the way other exports write them (SimulationConfig.export_files). Each
# holds exactly the rows and values of the plain part it replaces, so a day reads to the same
# clean and quarantined rows whatever the kinds; only names and bytes differ.
EXPORT_KINDS = (
    "gzip",  # part-XXX.csv.gz
    "zip",  # part-XXX.csv.zip holding part-XXX.csv
    "tsv",  # part-XXX.tsv, tab-separated
    "upper_case_extension",  # part-XXX.CSV
    "semicolon",  # semicolon-separated .csv
    "excel",  # an Excel export: UTF-8 byte-order mark, CRLF, ";" and decimal commas
    "tab_in_csv",  # tab-separated, named .csv
    "latin1",  # cp1252 text: one courier id carries an "é" (byte 0xE9, not UTF-8)
    "utf16",  # UTF-16-LE with a byte-order mark
    "epoch",  # ping times as epoch seconds with a fraction, order times as epoch microseconds
)
LATIN1_SUFFIX = "\u00e9"
EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()

# Random-stream tags: every purpose gets its own stream, so changing one knob (say dirty_files)
# leaves everything else byte-identical.
_WORLD, _DISTRICT, _NOISE, _ROWS, _FILES, _STRAYS = range(6)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``pings_per_day`` is the average number of clean pings per day before
    dirt; ``dirty_share`` is the share of rows made dirty, spread evenly over :data:`ROW_DIRT`.
    A scenario starts on ``scenario_start`` (default: the first day) and is baseline before."""

    city: City = DEFAULT_CITY
    start_date: datetime.date = datetime.date(2026, 10, 1)
    days: int = 14
    pings_per_day: int = 20_000
    dirty_share: float = 0.02
    dirty_files: bool = True
    # Which file dirt lands: None = each kind of FILE_DIRT_KINDS on about a third of days (the
    # day decides); a set = exactly those kinds on every day (a test chooses what a day holds).
    file_dirt: frozenset[str] | None = None
    # Export formats of EXPORT_KINDS to write parts in (off by default): the k-th chosen kind, in
    # EXPORT_KINDS order, rewrites part k, so at most files_per_day kinds.
    export_files: frozenset[str] = frozenset()
    scenario: str = "baseline"
    scenario_start: datetime.date | None = None
    seed: int = 7
    files_per_day: int = 3
    n_restaurants: int = 120
    n_couriers: int = 250
    # A real export often ends mid-day: the last simulated day then has no order created at
    # or after this UTC hour (and no ping after it). None: every day is whole.
    last_day_ends_at_hour: int | None = None
    # Another draw of the same world: the same city, restaurants, couriers and day volumes,
    # with orders, pings and dirt drawn afresh (0 = the canonical draw). Many draws of a day
    # give what even one who knew the day's volume could expect: a ceiling for any forecast.
    draw: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.city, City):
            raise ValueError(f"city must be a City, got {type(self.city).__name__}")
        try:
            ZoneInfo(self.city.timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(
                f"city timezone {self.city.timezone!r} is not a known time zone"
            ) from error
        if self.last_day_ends_at_hour is not None and not 0 < self.last_day_ends_at_hour < 24:
            raise ValueError(
                f"last_day_ends_at_hour must be an hour 1..23, got {self.last_day_ends_at_hour!r}"
            )
        if self.city.n_restaurant_clusters < 1:
            raise ValueError("city.n_restaurant_clusters must be at least 1")
        if self.scenario not in SCENARIOS:
            raise ValueError(
                f"unknown scenario {self.scenario!r}; valid scenarios: {', '.join(SCENARIOS)}"
            )
        for name in ("start_date", "scenario_start"):
            value = getattr(self, name)
            if not isinstance(value, datetime.date) and not (
                name == "scenario_start" and value is None
            ):
                raise ValueError(f"{name} must be a datetime.date, got {value!r}")
        for name, low in (
            ("days", 1),
            ("pings_per_day", 1),
            ("files_per_day", 1),
            ("n_restaurants", 1),
            ("n_couriers", 1),
            ("seed", 0),
            ("draw", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.pings_per_day > MAX_PINGS_PER_DAY:
            raise ValueError(
                f"pings_per_day must be at most {MAX_PINGS_PER_DAY:,}; simulate more days instead"
            )
        if self.file_dirt is not None and not set(self.file_dirt) <= set(FILE_DIRT_KINDS):
            raise ValueError(
                f"file_dirt must be a subset of {FILE_DIRT_KINDS}, got {sorted(self.file_dirt)}"
            )
        if not set(self.export_files) <= set(EXPORT_KINDS):
            raise ValueError(
                f"export_files must be a subset of {EXPORT_KINDS}, got {sorted(self.export_files)}"
            )
        if len(self.export_files) > self.files_per_day:
            raise ValueError(
                f"export_files rewrites one part file per kind: {len(self.export_files)} kinds "
                f"need files_per_day >= {len(self.export_files)}, got {self.files_per_day}"
            )
        if not 0 <= self.dirty_share < 0.5:
            raise ValueError(f"dirty_share must be in [0, 0.5), got {self.dirty_share!r}")

    def scenario_active(self, day: datetime.date) -> bool:
        """Whether the non-baseline scenario applies on ``day``."""
        start = self.scenario_start or self.start_date
        return self.scenario != "baseline" and day >= start


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate` wrote. ``dirty_rows`` counts rows meant to be refused (row-level
    dirt, invalid sensor-glitch pings, rows of re-delivered and wrong-header files), so the
    pipeline should keep exactly ``rows - dirty_rows`` clean rows."""

    days: int
    files: int
    rows: int
    dirty_rows: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class _Rows:
    """One city-day's part-file rows (text, in ping-time order) and what the simulator knows
    of them: simulated ping time and courier position (before text dirt), refused or not."""

    table: pa.Table
    ping_time: np.ndarray
    courier_lat: np.ndarray
    courier_lon: np.ndarray
    invalid: np.ndarray
    plain: np.ndarray
    scenario_index: int


@dataclass(frozen=True)
class _Day:
    files: dict[str, bytes]
    rows: int
    dirty_rows: int
    data: _Rows


@dataclass(frozen=True)
class _World:
    """Restaurants (baseline first, then the new district if any) and courier activity."""

    lat: np.ndarray
    lon: np.ndarray
    lat_text: pa.Array
    lon_text: pa.Array
    n_baseline: int
    popularity: np.ndarray
    courier_p: np.ndarray


def landing_key(day: datetime.date, file_name: str) -> str:
    """Object key of a raw file in the landing zone, partitioned by UTC day."""
    if not file_name or "/" in file_name:
        raise ValueError(f"file name must be a plain non-empty name, got {file_name!r}")
    return f"raw/dt={day.isoformat()}/{file_name}"


def simulate_day(config: SimulationConfig, day: datetime.date) -> dict[str, bytes]:
    """CSV files (name -> bytes) landing for one UTC day; depends only on config and day."""
    return _simulate_day(config, day).files


def simulate(
    config: SimulationConfig,
    put: Callable[[str, bytes], None],
    progress: bool = True,
    city_folder: bool = False,
) -> SimulationSummary:
    """Simulate every configured day and hand each file to ``put(key, content)``: under the
    city's own folder (``raw/city=<id>/dt=D/``) with ``city_folder``, else as an export of
    every city (``raw/dt=D/``, which the platform routes row by row)."""
    keys: list[str] = []
    rows = dirty_rows = 0
    days = [config.start_date + datetime.timedelta(days=i) for i in range(config.days)]
    for day in tqdm(
        days, desc="simulating days", unit="day", file=sys.stderr, disable=not progress
    ):
        result = _simulate_day(config, day)
        for name, content in result.files.items():
            key = (
                city_landing_key(config.city.id, day, name)
                if city_folder
                else landing_key(day, name)
            )
            put(key, content)
            keys.append(key)
        rows += result.rows
        dirty_rows += result.dirty_rows
    return SimulationSummary(
        days=config.days, files=len(keys), rows=rows, dirty_rows=dirty_rows, keys=tuple(keys)
    )


# ---------------------------------------------------------------------------------------------
# Several cities at once: per-city folders or one mixed export for all cities

Layout = Literal["per_city", "mixed"]
LAYOUTS: tuple[str, ...] = ("per_city", "mixed")

# Three cities unlike each other in every way the platform must handle: a clock without DST
# (Regina, the one-city default, so a one-city deployment matches), one with DST (New York) and
# a half-hour offset (Kolkata); radius 12/8/5 km, H3 resolution 7/8/8; three continents.
MULTI_CITIES: tuple[City, ...] = (
    DEFAULT_CITY,
    City(
        name="New York, NY",
        id="new-york",
        center_lat=40.7549,
        center_lon=-73.9840,
        service_radius_km=8.0,
        timezone="America/New_York",
        h3_resolution=8,
        n_restaurant_clusters=8,
    ),
    City(
        name="Kolkata",
        id="kolkata",
        center_lat=22.5726,
        center_lon=88.3639,
        service_radius_km=5.0,
        timezone="Asia/Kolkata",
        h3_resolution=8,
        n_restaurant_clusters=4,
    ),
)
# Per city of MULTI_CITIES: (restaurants, couriers, pings per day as a multiple of the base).
# Regina keeps SimulationConfig's defaults; Kolkata is the densest (most restaurants per km2).
MULTI_CITY_SCALE: dict[str, tuple[int, int, float]] = {
    "regina": (120, 250, 1.0),
    "new-york": (400, 600, 2.0),
    "kolkata": (220, 300, 1.5),
}
STRAY_DISTANCE = (1.5, 3.0)  # stray pings lie this many service radii from a city's centre
MIXED_EXPORT_ID = "mixed"


def multi_city_configs(
    cities: Sequence[City] = MULTI_CITIES, pings_per_day: int = 20_000, **changes
) -> tuple[SimulationConfig, ...]:
    """One :class:`SimulationConfig` per city, scaled by :data:`MULTI_CITY_SCALE` (cities not
    listed there get SimulationConfig's defaults); ``changes`` apply to every config. Regina's
    config equals ``SimulationConfig(pings_per_day=pings_per_day, **changes)``."""
    configs = []
    for city in cities:
        restaurants, couriers, scale = MULTI_CITY_SCALE.get(city.id, (120, 250, 1.0))
        settings = {
            "n_restaurants": restaurants,
            "n_couriers": couriers,
            "pings_per_day": max(1, round(pings_per_day * scale)),
            **changes,
        }
        configs.append(SimulationConfig(city=city, **settings))
    return tuple(configs)


def city_landing_key(city_id: str, day: datetime.date, file_name: str) -> str:
    """Object key of a raw file of one city: ``raw/city=<id>/dt=YYYY-MM-DD/<file>``."""
    if not CITY_ID.match(city_id):
        raise ValueError(f"city id must be a lowercase slug, got {city_id!r}")
    return f"raw/city={city_id}/{landing_key(day, file_name).removeprefix('raw/')}"


@dataclass(frozen=True)
class LandedFile:
    """One file :func:`simulate_cities` wrote.

    ``rows``: data rows (lines after the header; 0 for an empty file).
    ``city_rows``: of them, rows attributed to each city (by city id): every row of a per-city
    file, or the rows a city's simulation put in a readable mixed file. An unreadable mixed
    file (the legacy header) is attributed to no city: ``{}``.
    ``dirty_rows``: of ``city_rows``, rows meant to be refused (see :class:`CityTally`).
    ``stray_rows``: rows of stray pings (mixed only; a re-delivered part repeats its strays).
    ``readable``: False for the legacy-header file, which the ingestion refuses whole.
    ``rows == sum(city_rows.values()) + stray_rows`` for every file but an unreadable mixed one.
    """

    key: str
    day: datetime.date
    city_id: str | None  # None: the mixed export
    rows: int
    city_rows: dict[str, int]
    dirty_rows: int
    stray_rows: int
    readable: bool


@dataclass(frozen=True)
class CityTally:
    """What one city's simulation contributed.

    ``rows``: rows attributed to the city, the sum of its ``LandedFile.city_rows`` (per_city:
    exactly ``simulate(config).rows``; mixed: its rows in readable mixed files, i.e. its part
    rows plus its rows in a re-delivered part).
    ``dirty_rows``: of ``rows``, those meant to be refused whatever the routing: row-level dirt
    (one :data:`ROW_DIRT` reason each), broken sensor-glitch pings (null island, swapped sign),
    every row of a re-delivered part (duplicates) and, per_city only, the rows of the
    legacy-header file. Per_city it equals ``simulate(config).dirty_rows``.
    ``outside_rows``: of ``rows - dirty_rows``, valid pings whose courier lies outside the
    city's service area (only sensor-glitch jitter beyond the edge, and cities with a
    ``service_area`` polygon, whose pings are simulated in the disc): ``validate_pings`` keeps
    them, routing row by row refuses them as outside every service area.
    ``days``: the UTC days simulated for the city.
    """

    city_id: str
    days: tuple[datetime.date, ...]
    rows: int
    dirty_rows: int
    outside_rows: int


@dataclass(frozen=True)
class MultiCitySummary:
    """What :func:`simulate_cities` wrote, for exact bookkeeping.

    ``rows``: data rows of all files. ``rows == sum(c.rows for c in cities) + stray_rows +
    unreadable_rows``.
    ``dirty_rows``: ``sum(c.dirty_rows) + unreadable_rows``: every row refused for a data
    problem (strays and outside rows are not dirty: they are well-formed pings of nowhere).
    ``stray_rows``: rows of stray pings, in no city's service area but plausible (within
    ``implausible_distance_km`` of the centre of the city they stray from), in every file.
    ``unreadable_rows``: rows of unreadable mixed files (legacy header), which no city owns.
    A router refusing strays and outside rows keeps exactly
    ``rows - dirty_rows - stray_rows - sum(c.outside_rows)`` clean rows.
    """

    layout: str
    days: tuple[datetime.date, ...]
    files: tuple[LandedFile, ...]
    cities: tuple[CityTally, ...]
    rows: int
    dirty_rows: int
    stray_rows: int
    unreadable_rows: int

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(file.key for file in self.files)

    def city(self, city_id: str) -> CityTally:
        return next(tally for tally in self.cities if tally.city_id == city_id)


def simulate_cities(
    configs: Sequence[SimulationConfig],
    layout: Layout,
    put: Callable[[str, bytes], None],
    progress: bool = False,
    stray_share: float = 0.01,
) -> MultiCitySummary:
    """Simulate several cities, each as :func:`simulate` would (its days, seed, time zone and
    dirt), and land them in one of two layouts:

    ``per_city``: each city's day files, byte for byte those of :func:`simulate_day`, under
    ``raw/city=<id>/dt=D/`` (:func:`city_landing_key`); ``stray_share`` is not used.

    ``mixed``: one export per UTC day for all cities that have the day, under ``raw/dt=D/``:
    the cities' part rows of the day (the rows of their part files, dirt included, unchanged)
    plus ``round(stray_share * those rows)`` stray pings, all ordered by simulated ping time
    (stable: config order, then strays) and split into ``max(files_per_day)`` parts
    ``part-XXX.csv``. A stray copies a valid row of a city (courier, order, restaurant) with
    the courier 1.5-3 service radii from the centre (a courier between towns) and the ping a
    few seconds to two minutes later. File dirt of the export is the union of what the
    cities' days would get (:func:`_file_dirt_choice`): an empty ``part-<n>.csv``, a
    ``legacy-export.csv`` with the export's first LEGACY_ROWS rows, a re-delivered part (the
    first re-delivering city's part index, modulo the export's parts). Export formats
    (``export_files``) are per-city only: a mixed run refuses them.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    configs = tuple(configs)
    if not configs:
        raise ValueError("simulate_cities needs at least one config")
    ids = [config.city.id for config in configs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"city ids must be unique, got {ids}")
    if not 0 <= stray_share < 0.5:
        raise ValueError(f"stray_share must be in [0, 0.5), got {stray_share!r}")
    cities = tuple(config.city for config in configs)
    _check_disjoint(cities)
    if layout == "mixed":
        exporting = [config.city.id for config in configs if config.export_files]
        if exporting:
            raise ValueError(f"export_files are per-city only; set for {exporting}")
        for city in cities:
            _stray_range(city)  # raises if the city leaves no room for strays

    city_days = [
        tuple(config.start_date + datetime.timedelta(days=i) for i in range(config.days))
        for config in configs
    ]
    all_days = sorted(set().union(*city_days))
    tallies = {city.id: [0, 0, 0] for city in cities}  # rows, dirty, outside
    files: list[LandedFile] = []
    stray_rows = unreadable_rows = 0

    def land(key: str, content: bytes, day: datetime.date, city_id: str | None, **counts) -> None:
        put(key, content)
        files.append(LandedFile(key=key, day=day, city_id=city_id, **counts))

    for day in tqdm(
        all_days, desc="simulating days", unit="day", file=sys.stderr, disable=not progress
    ):
        present = [i for i, days in enumerate(city_days) if day in days]
        if layout == "per_city":
            for i in present:
                config, city_id = configs[i], cities[i].id
                result = _simulate_day(config, day)
                data = result.data
                outside = ~data.invalid & ~_in_service_area(
                    cities[i], _micro(data.courier_lat), _micro(data.courier_lon)
                )
                tally = tallies[city_id]
                tally[0] += result.rows
                tally[1] += result.dirty_rows
                tally[2] += int(outside.sum())
                n, parts = data.table.num_rows, config.files_per_day
                bounds = _bounds(n, parts)
                for name, content in result.files.items():
                    rows = _data_rows(content, name, bounds, n)
                    dirty = _dirty_in(name, data.invalid, bounds, rows)
                    land(
                        city_landing_key(city_id, day, name),
                        content,
                        day,
                        city_id,
                        rows=rows,
                        city_rows={city_id: rows},
                        dirty_rows=dirty,
                        stray_rows=0,
                        readable=name != "legacy-export.csv",
                    )
            continue

        export = _mixed_day(configs, present, cities, day, stray_share)
        for counts in export.files:
            land(landing_key(day, counts.pop("name")), counts.pop("content"), day, None, **counts)
            if counts["readable"]:
                stray_rows += counts["stray_rows"]
            else:
                unreadable_rows += counts["rows"]
        for i in present:
            tally = tallies[cities[i].id]
            for k, value in enumerate(export.tallies[i]):
                tally[k] += value

    city_tallies = tuple(
        CityTally(
            city_id=city.id,
            days=days,
            rows=tallies[city.id][0],
            dirty_rows=tallies[city.id][1],
            outside_rows=tallies[city.id][2],
        )
        for city, days in zip(cities, city_days, strict=True)
    )
    return MultiCitySummary(
        layout=layout,
        days=tuple(all_days),
        files=tuple(files),
        cities=city_tallies,
        rows=sum(file.rows for file in files),
        dirty_rows=sum(t.dirty_rows for t in city_tallies) + unreadable_rows,
        stray_rows=stray_rows,
        unreadable_rows=unreadable_rows,
    )


@dataclass(frozen=True)
class _MixedDay:
    files: list[dict]  # LandedFile fields but key/day/city_id, plus name and content
    tallies: dict[int, tuple[int, int, int]]  # config index -> rows, dirty, outside


def _mixed_day(
    configs: tuple[SimulationConfig, ...],
    present: list[int],
    cities: tuple[City, ...],
    day: datetime.date,
    stray_share: float,
) -> _MixedDay:
    """One UTC day's export for all ``present`` cities (see :func:`simulate_cities`)."""
    data = {i: _day_rows(configs[i], day) for i in present}
    tables = [data[i].table for i in present]
    origin = np.concatenate([np.full(data[i].table.num_rows, i) for i in present])
    ping_time = np.concatenate([data[i].ping_time for i in present])
    invalid = np.concatenate([data[i].invalid for i in present])
    outside = np.concatenate(
        [
            ~data[i].invalid
            & ~_in_service_area(cities[i], _micro(data[i].courier_lat), _micro(data[i].courier_lon))
            for i in present
        ]
    )
    n_city = len(origin)
    strays, stray_time = _strays(configs, present, cities, day, stray_share, data)
    table = pa.concat_tables([*tables, strays])
    origin = np.concatenate([origin, np.full(strays.num_rows, -1)])
    ping_time = np.concatenate([ping_time, stray_time])
    invalid = np.concatenate([invalid, np.zeros(strays.num_rows, bool)])
    outside = np.concatenate([outside, np.zeros(strays.num_rows, bool)])
    order = np.argsort(ping_time, kind="stable")
    table, origin, invalid, outside = (
        table.take(order),
        origin[order],
        invalid[order],
        outside[order],
    )
    n = n_city + strays.num_rows

    def counts(rows: slice, refused_all: bool, readable: bool = True) -> dict:
        mine = origin[rows]
        city_rows = {cities[i].id: int((mine == i).sum()) for i in present} if readable else {}
        refused = (mine >= 0) if refused_all else ((mine >= 0) & invalid[rows])
        return {
            "rows": len(mine),
            "city_rows": city_rows,
            "dirty_rows": int(refused.sum()) if readable else 0,
            "stray_rows": int((mine < 0).sum()) if readable else 0,
            "readable": readable,
        }

    n_parts = max(configs[i].files_per_day for i in present)
    bounds = _bounds(n, n_parts)
    files = []
    for k in range(n_parts):
        rows = slice(bounds[k], bounds[k + 1])
        name, content = (
            f"part-{k:03d}.csv",
            _csv(RAW_COLUMNS, table.slice(rows.start, rows.stop - rows.start)),
        )
        files.append({"name": name, "content": content, **counts(rows, refused_all=False)})
    per_city = {
        i: [int((origin == i).sum()), int((invalid & (origin == i)).sum()), 0] for i in present
    }
    for i in present:
        per_city[i][2] = int((outside & (origin == i)).sum())

    choices = [
        _file_dirt_choice(configs[i], day, data[i].scenario_index)
        for i in present
        if configs[i].dirty_files
    ]
    if any(choice[0] for choice in choices):
        files.append(
            {"name": f"part-{n_parts:03d}.csv", "content": b"", **counts(slice(0, 0), False)}
        )
    if any(choice[1] for choice in choices):
        k = min(LEGACY_ROWS, n)
        files.append(
            {
                "name": "legacy-export.csv",
                "content": _csv(LEGACY_HEADER, table.slice(0, k)),
                **counts(slice(0, k), refused_all=True, readable=False),
            }
        )
    redelivering = [choice[3] for choice in choices if choice[2]]
    if redelivering:
        k = redelivering[0] % n_parts
        part = files[k]
        rows = slice(bounds[k], bounds[k + 1])
        extra = counts(rows, refused_all=True)
        files.append({"name": f"redelivered-{part['name']}", "content": part["content"], **extra})
        mine = origin[rows]
        for i in present:
            per_city[i][0] += int((mine == i).sum())
            per_city[i][1] += int((mine == i).sum())
    return _MixedDay(files=files, tallies={i: tuple(v) for i, v in per_city.items()})


def _strays(
    configs: tuple[SimulationConfig, ...],
    present: list[int],
    cities: tuple[City, ...],
    day: datetime.date,
    share: float,
    data: dict[int, _Rows],
) -> tuple[pa.Table, np.ndarray]:
    """Stray pings of one mixed day: each copies a random valid row of a present city (so the
    cities stray in proportion to their valid rows) with the courier 1.5-3 service radii from
    that city's centre, outside every service area, and the ping 1 s to 2 min later."""
    keys = [key for i in present for key in (configs[i].seed, _city_key(cities[i]))]
    rng = np.random.default_rng([_STRAYS, day.toordinal(), *keys])
    n_rows = sum(data[i].table.num_rows for i in present)
    source = np.concatenate([np.full(data[i].table.num_rows, i) for i in present])
    valid = np.flatnonzero(np.concatenate([~data[i].invalid for i in present]))
    n = round(share * n_rows) if len(valid) else 0
    table = pa.concat_tables([data[i].table for i in present])
    picked = np.sort(rng.choice(valid, size=n)) if n else np.zeros(0, np.int64)
    city_of = source[picked]
    centre_lat = np.array([cities[i].center_lat for i in city_of], dtype=np.float64)
    centre_lon = np.array([cities[i].center_lon for i in city_of], dtype=np.float64)
    low, high = (
        np.array([_stray_range(cities[i])[k] for i in city_of], dtype=np.float64) for k in (0, 1)
    )
    lat, lon = np.zeros(n), np.zeros(n)
    todo = np.arange(n)
    for _ in range(100):  # redraw the few that land in some (other) city's area
        if not len(todo):
            break
        km = rng.uniform(low[todo], high[todo])
        lat[todo], lon[todo] = _move(
            centre_lat[todo], centre_lon[todo], km, rng.uniform(0, 2 * np.pi, len(todo))
        )
        lat[todo], lon[todo] = _micro(lat[todo]), _micro(lon[todo])
        inside = np.zeros(len(todo), bool)
        for city in cities:
            inside |= _in_service_area(city, lat[todo], lon[todo])
        todo = todo[inside]
    if len(todo):
        raise ValueError(f"no room for stray pings outside the service areas on {day}")
    ping_time = np.concatenate([data[i].ping_time for i in present])[picked]
    day_end = (day.toordinal() + 1 - EPOCH_ORDINAL) * 24 * US_PER_HOUR
    ping_time = np.minimum(ping_time + rng.integers(1_000_000, 120_000_000, n), day_end - 1)
    rows = table.take(picked)
    columns = {name: rows.column(name) for name in RAW_COLUMNS}
    columns["courier_location_timestamp"] = _iso(ping_time)
    columns["courier_lat"], columns["courier_lon"] = _fixed6(lat), _fixed6(lon)
    return pa.table([columns[c] for c in RAW_COLUMNS], names=list(RAW_COLUMNS)), ping_time


def _stray_range(city: City) -> tuple[float, float]:
    """Distances (km) from the centre at which strays of ``city`` lie: 1.5-3 service radii,
    kept well inside the plausible distance."""
    radius, limit = city.service_radius_km, city.implausible_distance_km
    low = min(STRAY_DISTANCE[0] * radius, radius + 0.5 * (limit - radius))
    high = min(STRAY_DISTANCE[1] * radius, radius + 0.9 * (limit - radius))
    if low <= radius * 1.01:
        raise ValueError(
            f"{city.id}: implausible_distance_km must exceed service_radius_km for stray pings"
        )
    return low, high


def _check_disjoint(cities: tuple[City, ...]) -> None:
    """Rows are attributed by the city that simulated them: service discs must not overlap."""
    for a, city in enumerate(cities):
        for other in cities[a + 1 :]:
            km = float(
                haversine_km(city.center_lat, city.center_lon, other.center_lat, other.center_lon)
            )
            if km < city.service_radius_km + other.service_radius_km:
                raise ValueError(f"service areas of {city.id} and {other.id} overlap")


def _in_service_area(city: City, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Whether each point lies in the city's service area: inside its ``service_area`` polygon
    (even-odd rule on (lat, lon)), or without one within ``service_radius_km`` of the centre."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if city.service_area is None:
        km = haversine_km(lat, lon, city.center_lat, city.center_lon)
        return km <= city.service_radius_km
    vertices = np.asarray(city.service_area, np.float64)
    y0, x0 = vertices[:, 0], vertices[:, 1]
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    py, px = lat[:, None], lon[:, None]
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return ((crosses & (px < x_at)).sum(axis=1) % 2) == 1


def _micro(values: np.ndarray) -> np.ndarray:
    """Coordinates as written (6 decimals), so area checks see what a reader parses."""
    return np.rint(np.asarray(values, np.float64) * 1e6) / 1e6


def _data_rows(content: bytes, name: str, bounds: np.ndarray, n: int) -> int:
    """Data rows of a per-city file, from what the simulator wrote (not by counting lines:
    exports may be compressed)."""
    if not content:
        return 0
    if name == "legacy-export.csv":
        return min(LEGACY_ROWS, n)
    part = int(name.removeprefix("redelivered-").split(".")[0].removeprefix("part-"))
    return int(bounds[part + 1] - bounds[part])


def _dirty_in(name: str, invalid: np.ndarray, bounds: np.ndarray, rows: int) -> int:
    if not rows or name == "legacy-export.csv" or name.startswith("redelivered-"):
        return rows
    part = int(name.split(".")[0].removeprefix("part-"))
    return int(invalid[bounds[part] : bounds[part + 1]].sum())


def _simulate_day(config: SimulationConfig, day: datetime.date) -> _Day:
    data = _day_rows(config, day)
    table, n = data.table, data.table.num_rows
    bounds = _bounds(n, config.files_per_day)
    parts = [
        (f"part-{i:03d}.csv", _csv(RAW_COLUMNS, table.slice(bounds[i], bounds[i + 1] - bounds[i])))
        for i in range(config.files_per_day)
    ]
    if config.export_files:
        kinds = [kind for kind in EXPORT_KINDS if kind in config.export_files]
        for i, kind in enumerate(kinds):
            part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
            parts[i] = _export_file(kind, i, part, data.plain[bounds[i] : bounds[i + 1]])
    files = dict(parts)
    rows_written = n
    refused = int(data.invalid.sum())
    if config.dirty_files:
        extra, extra_rows = _file_dirt(config, day, data.scenario_index, parts, bounds, table)
        files.update(extra)
        rows_written += extra_rows
        refused += extra_rows
    return _Day(files=files, rows=rows_written, dirty_rows=refused, data=data)


def _bounds(n: int, parts: int) -> np.ndarray:
    """Row bounds of ``parts`` near-equal consecutive part files of ``n`` rows."""
    return np.linspace(0, n, parts + 1).round().astype(int)


def _day_rows(config: SimulationConfig, day: datetime.date) -> _Rows:
    """The rows of one UTC day's part files, in ping-time order, before any file is written."""
    city = config.city
    active = config.scenario_active(day)
    scenario_index = SCENARIOS.index(config.scenario) if active else 0
    world = _world(
        config.seed,
        city,
        config.n_restaurants,
        config.n_couriers,
        config.scenario == "new_district",
    )
    rng = _rng(_ROWS, config, day.toordinal(), scenario_index)

    # Orders: Poisson per UTC hour with the local-time daily shape; times uniform in the hour.
    expected = _hourly_orders(config, day)
    if active and config.scenario == "new_district":
        expected = expected * NEW_DISTRICT_VOLUME
    last_day = config.start_date + datetime.timedelta(days=config.days - 1)
    data_hours = 24
    if config.last_day_ends_at_hour is not None and day == last_day:
        data_hours = config.last_day_ends_at_hour
        expected = np.where(np.arange(24) < data_hours, expected, 0.0)
    counts = rng.poisson(expected)
    n_orders = int(counts.sum())
    day_start = (day.toordinal() - EPOCH_ORDINAL) * 24 * US_PER_HOUR
    day_end = day_start + data_hours * US_PER_HOUR  # where this day's data stops
    created = np.sort(
        day_start
        + np.repeat(np.arange(24, dtype=np.int64) * US_PER_HOUR, counts)
        + rng.integers(0, US_PER_HOUR, n_orders)
    )
    order_number = day.toordinal() * ORDER_NUMBER_STRIDE + np.arange(n_orders, dtype=np.int64)
    restaurant = _pick_restaurants(
        rng, world, n_orders, new_district=active and config.scenario == "new_district"
    )
    courier = rng.choice(len(world.courier_p), size=n_orders, p=world.courier_p)

    # Pings: 1..6 per order within 20 minutes after creation, squeezed before midnight so that
    # a day file only ever holds its own UTC day.
    per_order = rng.integers(1, MAX_PINGS_PER_ORDER + 1, n_orders)
    owner = np.repeat(np.arange(n_orders), per_order)
    window = np.minimum(PING_WINDOW_US, day_end - 1 - created)[owner]
    ping_time = created[owner] + (window * rng.uniform(0.15, 1.0, len(owner))).astype(np.int64)
    r_lat, r_lon = world.lat[restaurant[owner]], world.lon[restaurant[owner]]
    distance_km = np.clip(rng.lognormal(np.log(0.06), 0.7, len(owner)), 0.005, 0.4)
    c_lat, c_lon = _move(r_lat, r_lon, distance_km, rng.uniform(0, 2 * np.pi, len(owner)))
    c_lat, c_lon = _into_radius(city, c_lat, c_lon)

    order = np.argsort(ping_time, kind="stable")
    owner, ping_time, c_lat, c_lon = owner[order], ping_time[order], c_lat[order], c_lon[order]
    n = len(owner)

    # Which rows go wrong: row-level dirt, and (sensor_glitch) broken courier GPS.
    u = rng.random(n)
    dirty_rows = np.flatnonzero(u < config.dirty_share)
    dirt_kind = rng.integers(len(ROW_DIRT), size=len(dirty_rows))
    invalid = u < config.dirty_share
    if active and config.scenario == "sensor_glitch":
        c_lat, c_lon, broken = _sensor_glitch(rng, city, c_lat, c_lon, u, config.dirty_share)
        invalid |= broken

    # Duplicates copy the nearest earlier valid row (same file, usually the next line).
    row = np.arange(n)
    duplicates = dirty_rows[dirt_kind == ROW_DIRT.index(QuarantineReason.DUPLICATE)]
    valid = np.flatnonzero(~invalid)
    if len(valid):
        row[duplicates] = valid[np.maximum(np.searchsorted(valid, duplicates) - 1, 0)]
    else:
        invalid[duplicates] = False  # nothing valid to copy: leave those rows clean
    owner, ping_time, c_lat, c_lon = owner[row], ping_time[row], c_lat[row], c_lon[row]
    ping_restaurant = restaurant[owner]

    columns = {
        "courier_id": _text(courier + 1000).take(owner),  # order-level text is formatted
        "order_number": _text(order_number).take(owner),  # once per order, then repeated
        "courier_location_timestamp": _iso(ping_time),
        "courier_lat": _fixed6(c_lat),
        "courier_lon": _fixed6(c_lon),
        "order_created_timestamp": _iso(created).take(owner),
        "restaurant_lat": world.lat_text.take(ping_restaurant),
        "restaurant_lon": world.lon_text.take(ping_restaurant),
    }
    numbers = {
        "courier_lat": c_lat,
        "courier_lon": c_lon,
        "restaurant_lat": world.lat[ping_restaurant],
        "restaurant_lon": world.lon[ping_restaurant],
    }
    edits = _row_dirt(rng, city, dirty_rows, dirt_kind, ping_time, numbers)
    for column, (rows, values) in edits.items():
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        columns[column] = pc.replace_with_mask(columns[column], pa.array(mask), values)
    table = pa.table([columns[c] for c in RAW_COLUMNS], names=list(RAW_COLUMNS))
    # rows whose courier id an export may change: valid, and no duplicate copies them
    plain = ~invalid
    plain[row[duplicates]] = False
    return _Rows(
        table=table,
        ping_time=ping_time,
        courier_lat=c_lat,
        courier_lon=c_lon,
        invalid=invalid,
        plain=plain,
        scenario_index=scenario_index,
    )


def _file_dirt(
    config: SimulationConfig,
    day: datetime.date,
    scenario_index: int,
    parts: list[tuple[str, bytes]],
    bounds: np.ndarray,
    table: pa.Table,
) -> tuple[dict[str, bytes], int]:
    """Empty file, wrong-header file and a re-delivered part: each on about a third of days, or
    exactly those of ``config.file_dirt``."""
    empty, legacy, redeliver, part = _file_dirt_choice(config, day, scenario_index)
    files: dict[str, bytes] = {}
    rows = 0
    if empty:
        files[f"part-{config.files_per_day:03d}.csv"] = b""
    if legacy:
        k = min(LEGACY_ROWS, table.num_rows)
        files["legacy-export.csv"] = _csv(LEGACY_HEADER, table.slice(0, k))
        rows += k
    if redeliver:
        name, content = parts[part]
        files[f"redelivered-{name}"] = content
        rows += int(bounds[part + 1] - bounds[part])
    return files, rows


def _file_dirt_choice(
    config: SimulationConfig, day: datetime.date, scenario_index: int
) -> tuple[bool, bool, bool, int]:
    """Whether the day has an empty file, a legacy-header file and a re-delivered part, and
    which part is re-delivered."""
    rng = _rng(_FILES, config, day.toordinal(), scenario_index)
    empty, legacy, redeliver = (bool(b) for b in rng.random(3) < FILE_DIRT_PROBABILITY)
    part = int(rng.integers(config.files_per_day))
    if config.file_dirt is not None:
        empty, legacy, redeliver = (kind in config.file_dirt for kind in FILE_DIRT_KINDS)
    return empty, legacy, redeliver, part


def _row_dirt(
    rng: np.random.Generator,
    city: City,
    dirty_rows: np.ndarray,
    dirt_kind: np.ndarray,
    ping_time: np.ndarray,
    numbers: dict[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, pa.Array]]:
    """Replacement text per column (row indices, values) for the text-level dirt kinds."""
    edits: dict[str, list[tuple[np.ndarray, pa.Array]]] = {}

    def put(column: str, rows: np.ndarray, values) -> None:
        edits.setdefault(column, []).append((rows, pa.array(values, type=pa.string())))

    def by_column(rows: np.ndarray, choices: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
        pick = rng.integers(len(choices), size=len(rows))
        return [(column, rows[pick == i]) for i, column in enumerate(choices)]

    def rows_of(reason: QuarantineReason) -> np.ndarray:
        return dirty_rows[dirt_kind == ROW_DIRT.index(reason)]

    for column, rows in by_column(rows_of(QuarantineReason.MISSING_VALUE), RAW_COLUMNS):
        put(column, rows, rng.choice(MISSING_TEXT, len(rows)).astype(object))
    for column, rows in by_column(
        rows_of(QuarantineReason.UNPARSEABLE_TIMESTAMP), TIMESTAMP_COLUMNS
    ):
        put(column, rows, rng.choice(BAD_TIMESTAMP_TEXT, len(rows)).astype(object))
    for column, rows in by_column(rows_of(QuarantineReason.UNPARSEABLE_NUMBER), COORDINATE_COLUMNS):
        put(column, rows, rng.choice(BAD_NUMBER_TEXT, len(rows)).astype(object))
    for column, rows in by_column(rows_of(QuarantineReason.OUT_OF_RANGE), COORDINATE_COLUMNS):
        limit = 90.0 if column.endswith("_lat") else 180.0  # push past the limit, keep the sign
        value = numbers[column][rows]
        put(column, rows, _fixed6(np.where(value < 0, -1, 1) * (np.abs(value) + limit)))
    pairs = (("courier_lat", "courier_lon"), ("restaurant_lat", "restaurant_lon"))
    for (lat, lon), rows in by_column(rows_of(QuarantineReason.NULL_ISLAND), pairs):
        put(lat, rows, _fixed6(np.zeros(len(rows))))
        put(lon, rows, _fixed6(np.zeros(len(rows))))
    for (lat, lon), rows in by_column(rows_of(QuarantineReason.IMPLAUSIBLE_LOCATION), pairs):
        far_lat, far_lon = _far_away(numbers[lat][rows], numbers[lon][rows], city)
        put(lat, rows, _fixed6(far_lat))
        put(lon, rows, _fixed6(far_lon))
    rows = rows_of(QuarantineReason.ORDER_AFTER_PING)
    late = ping_time[rows] + US_PER_HOUR + rng.integers(0, US_PER_HOUR // 2, len(rows))
    put("order_created_timestamp", rows, _iso(late))

    merged = {}
    for column, parts in edits.items():
        rows = np.concatenate([r for r, _ in parts])
        values = pa.concat_arrays([v for _, v in parts])
        order = np.argsort(rows, kind="stable")
        merged[column] = (rows[order], values.take(order))
    return merged


def _sensor_glitch(
    rng: np.random.Generator,
    city: City,
    lat: np.ndarray,
    lon: np.ndarray,
    u: np.ndarray,
    dirty_share: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broken courier GPS on the rows with ``u`` just above the dirty ones (so the two never
    overlap): a third null island, a third swapped signs (both refused), a third jitter of a
    kilometre or more (still plausible, so it passes and shows up as drift instead)."""
    glitched = np.flatnonzero((u >= dirty_share) & (u < dirty_share + GLITCH_SHARE))
    kind = rng.integers(3, size=len(glitched))
    null, flip, jitter = (glitched[kind == k] for k in range(3))
    lat, lon = lat.copy(), lon.copy()
    lat[null] = lon[null] = 0.0
    lat[flip], lon[flip] = _far_away(lat[flip], lon[flip], city)
    km = 1.0 + rng.exponential(1.0, len(jitter))
    lat[jitter], lon[jitter] = _move(
        lat[jitter], lon[jitter], km, rng.uniform(0, 2 * np.pi, len(jitter))
    )
    broken = np.zeros(len(u), dtype=bool)
    broken[null] = broken[flip] = True
    return lat, lon, broken


def _hourly_orders(config: SimulationConfig, day: datetime.date) -> np.ndarray:
    """Expected orders in each UTC hour of ``day``, shaped by the city's local clock."""
    tz = ZoneInfo(config.city.timezone)
    start = datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
    local = [(start + datetime.timedelta(hours=h + 0.5)).astimezone(tz) for h in range(24)]
    local_hour = np.array([t.hour + t.minute / 60 + t.second / 3600 for t in local])
    weekend = np.array([t.weekday() >= 5 for t in local])
    noise = np.array([_day_noise(config, t.date()) for t in local])

    grid = np.arange(24) + 0.5
    weekday_total = _daily_shape(grid, np.zeros(24, bool)).sum()
    weekend_total = _daily_shape(grid, np.ones(24, bool)).sum()
    volume = np.where(weekend, WEEKEND_VOLUME * weekday_total / weekend_total, 1.0)
    orders_per_weekday = config.pings_per_day / MEAN_PINGS_PER_ORDER * 7 / (5 + 2 * WEEKEND_VOLUME)
    return orders_per_weekday * _daily_shape(local_hour, weekend) * volume * noise / weekday_total


def _daily_shape(local_hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Relative demand at a local hour: lunch peak ~12:15, bigger dinner peak ~18:30, quiet
    nights; weekends have a weaker lunch and a stronger dinner."""

    def bump(centre: float, width: float) -> np.ndarray:
        distance = np.abs(local_hour - centre)
        distance = np.minimum(distance, 24 - distance)
        return np.exp(-0.5 * (distance / width) ** 2)

    lunch = np.where(weekend, 0.45, 0.7) * bump(12.25, 1.0)
    dinner = np.where(weekend, 1.3, 1.0) * bump(18.5, 1.4)
    afternoon = 0.12 * np.exp(-(((local_hour - 15.5) / 6.0) ** 4))
    return 0.004 + lunch + dinner + afternoon


def _day_noise(config: SimulationConfig, local_day: datetime.date) -> float:
    """Mean-one volume factor of one local day, shared by the two UTC days it overlaps."""
    z = _rng(_NOISE, config, local_day.toordinal()).standard_normal()
    return float(np.exp(DAY_NOISE_SIGMA * z - DAY_NOISE_SIGMA**2 / 2))


def _pick_restaurants(
    rng: np.random.Generator, world: _World, n_orders: int, new_district: bool
) -> np.ndarray:
    """Restaurant of each order by popularity; the new district takes its share when active."""
    base = world.popularity[: world.n_baseline]
    picked = rng.choice(world.n_baseline, size=n_orders, p=base / base.sum())
    if new_district:
        extra = world.popularity[world.n_baseline :]
        to_new = rng.random(n_orders) < NEW_DISTRICT_SHARE
        in_new = world.n_baseline + rng.choice(len(extra), size=n_orders, p=extra / extra.sum())
        picked = np.where(to_new, in_new, picked)
    return picked


@lru_cache(maxsize=16)
def _world(
    seed: int, city: City, n_restaurants: int, n_couriers: int, with_district: bool
) -> _World:
    """The city's restaurants and couriers; the same for every day of a simulation."""
    rng = np.random.default_rng([_WORLD, seed, _city_key(city)])
    radius = city.service_radius_km
    k = city.n_restaurant_clusters
    centres = _uniform_disc(rng, k, 0.7 * radius)
    sigma = rng.uniform(0.5, 1.5, k)
    scattered = n_restaurants // 10
    per_cluster = rng.multinomial(n_restaurants - scattered, rng.dirichlet(np.full(k, 2.0)))
    cluster = np.repeat(np.arange(k), per_cluster)
    xy = np.vstack(
        [
            centres[cluster] + rng.normal(size=(len(cluster), 2)) * sigma[cluster, None],
            _uniform_disc(rng, scattered, radius),
        ]
    )
    popularity = rng.lognormal(0.0, 1.0, n_restaurants)
    courier_activity = rng.lognormal(0.0, 0.5, n_couriers)
    if with_district:
        district_rng = np.random.default_rng([_DISTRICT, seed, _city_key(city)])
        n_new = max(10, n_restaurants // 4)
        centre = _quietest_point(xy, radius)
        xy = np.vstack([xy, centre + district_rng.normal(size=(n_new, 2)) * 0.6])
        popularity = np.concatenate([popularity, district_rng.lognormal(0.0, 1.0, n_new)])
    xy = _clip_to_disc(xy, 0.95 * radius)
    lat = np.round(city.center_lat + xy[:, 1] / KM_PER_DEGREE, 6)
    lon = np.round(
        city.center_lon + xy[:, 0] / (KM_PER_DEGREE * np.cos(np.radians(city.center_lat))), 6
    )
    for array in (lat, lon, popularity, courier_activity):
        array.setflags(write=False)
    return _World(
        lat=lat,
        lon=lon,
        lat_text=_fixed6(lat),
        lon_text=_fixed6(lon),
        n_baseline=n_restaurants,
        popularity=popularity,
        courier_p=courier_activity / courier_activity.sum(),
    )


def _quietest_point(xy: np.ndarray, radius: float) -> np.ndarray:
    """Point of the service area (km offsets) furthest from every existing restaurant."""
    r, angle = np.meshgrid(
        np.linspace(0.25, 0.75, 6) * radius, np.linspace(0, 2 * np.pi, 72, endpoint=False)
    )
    candidates = np.column_stack([(r * np.cos(angle)).ravel(), (r * np.sin(angle)).ravel()])
    nearest = np.linalg.norm(candidates[:, None, :] - xy[None, :, :], axis=2).min(axis=1)
    return candidates[np.argmax(nearest)]


def _uniform_disc(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    r = radius * np.sqrt(rng.random(n))
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.column_stack([r * np.cos(angle), r * np.sin(angle)])


def _clip_to_disc(xy: np.ndarray, radius: float) -> np.ndarray:
    norm = np.linalg.norm(xy, axis=1)
    return xy * np.minimum(1.0, radius / np.maximum(norm, 1e-12))[:, None]


def _into_radius(city: City, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Courier positions pulled just inside the service radius where they lie beyond it, so
    valid pings stay in the service area (restaurants lie within 0.95 of the radius and
    couriers within 0.4 km of them: this never moves a ping of a city of radius 8.2 km or more,
    every other position is returned bit for bit)."""
    limit = city.service_radius_km - IN_AREA_MARGIN_KM
    km = haversine_km(lat, lon, city.center_lat, city.center_lon)
    beyond = km > limit
    if not beyond.any():
        return lat, lon
    scale = limit / np.maximum(km, 1e-12)
    new_lat = np.where(beyond, city.center_lat + (lat - city.center_lat) * scale, lat)
    new_lon = np.where(beyond, city.center_lon + (lon - city.center_lon) * scale, lon)
    return new_lat, new_lon


def _move(
    lat: np.ndarray, lon: np.ndarray, km: np.ndarray, bearing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Points ``km`` away from (lat, lon) towards ``bearing`` (radians from north), flat-earth."""
    new_lat = lat + km * np.cos(bearing) / KM_PER_DEGREE
    new_lon = lon + km * np.sin(bearing) / (KM_PER_DEGREE * np.cos(np.radians(lat)))
    return new_lat, new_lon


def _far_away(lat: np.ndarray, lon: np.ndarray, city: City) -> tuple[np.ndarray, np.ndarray]:
    """A sign error that lands beyond the city's plausible distance: flip the longitude's sign,
    else the latitude's (for cities near a meridian or the equator), else the antipode."""
    limit = city.implausible_distance_km

    def far(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return haversine_km(a, b, city.center_lat, city.center_lon) > limit

    antipode_lat, antipode_lon = -lat, np.where(lon > 0, lon - 180, lon + 180)
    use_lon, use_lat = far(lat, -lon), far(-lat, lon)
    new_lat = np.where(use_lon, lat, np.where(use_lat, -lat, antipode_lat))
    new_lon = np.where(use_lon, -lon, np.where(use_lat, lon, antipode_lon))
    return new_lat, new_lon


def _fixed6(values: np.ndarray) -> pa.Array:
    """Decimal text with exactly 6 decimals, built with Arrow kernels (no per-value Python)."""
    micro = np.rint(np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64)
    whole, fraction = np.divmod(np.abs(micro), 1_000_000)
    sign = pc.if_else(pa.array(micro < 0), "-", "")
    fraction_text = pc.utf8_slice_codeunits(_text(fraction + 1_000_000), 1)
    return pc.binary_join_element_wise(sign, _text(whole), ".", fraction_text, "")


def _iso(micros: np.ndarray) -> pa.Array:
    """ISO-8601 UTC text with microseconds, e.g. ``2026-10-01T17:03:12.123456Z``."""
    stamps = pa.array(np.asarray(micros, dtype=np.int64), type=pa.timestamp("us"))
    text = pc.binary_replace_slice(stamps.cast(pa.string()), 10, 11, "T")  # Arrow's cast is
    return pc.binary_join_element_wise(text, "Z", "")  # far faster than its strftime


def _text(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64)).cast(pa.string())


def _csv(header: tuple[str, ...], table: pa.Table, delimiter: str = ",") -> bytes:
    """CSV bytes: a plain header line, then the text columns unquoted (no value needs quotes)."""
    sink = io.BytesIO()
    sink.write((delimiter.join(header) + "\n").encode())
    pa_csv.write_csv(
        table,
        sink,
        pa_csv.WriteOptions(include_header=False, quoting_style="none", delimiter=delimiter),
    )
    return sink.getvalue()


def _export_file(kind: str, index: int, part: pa.Table, plain: np.ndarray) -> tuple[str, bytes]:
    """Name and bytes of part ``index`` written as export ``kind`` (see EXPORT_KINDS); ``plain``
    marks the rows whose courier id the Latin-1 kind may extend."""
    stem = f"part-{index:03d}"
    if kind == "gzip":
        return f"{stem}.csv.gz", gzip.compress(_csv(RAW_COLUMNS, part), mtime=0)
    if kind == "zip":
        sink = io.BytesIO()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(
                zipfile.ZipInfo(f"{stem}.csv", (1980, 1, 1, 0, 0, 0)), _csv(RAW_COLUMNS, part)
            )
        return f"{stem}.csv.zip", sink.getvalue()
    if kind == "tsv":
        return f"{stem}.tsv", _csv(RAW_COLUMNS, part, "\t")
    if kind == "upper_case_extension":
        return f"{stem}.CSV", _csv(RAW_COLUMNS, part)
    if kind == "semicolon":
        return f"{stem}.csv", _csv(RAW_COLUMNS, part, ";")
    if kind == "excel":
        commas = part
        for column in COORDINATE_COLUMNS:
            position = commas.schema.get_field_index(column)
            text = pc.replace_substring(commas.column(column), ".", ",")
            commas = commas.set_column(position, column, text)
        content = _csv(RAW_COLUMNS, commas, ";").replace(b"\n", b"\r\n")
        return f"{stem}.csv", b"\xef\xbb\xbf" + content
    if kind == "tab_in_csv":
        return f"{stem}.csv", _csv(RAW_COLUMNS, part, "\t")
    if kind == "latin1":
        rows = np.flatnonzero(plain)
        if len(rows):
            mask = np.zeros(part.num_rows, dtype=bool)
            mask[rows[0]] = True
            ids = part.column("courier_id").combine_chunks()
            extended = pa.array([ids[rows[0]].as_py() + LATIN1_SUFFIX])
            ids = pc.replace_with_mask(ids, pa.array(mask), extended)
            part = part.set_column(part.schema.get_field_index("courier_id"), "courier_id", ids)
        return f"{stem}.csv", _csv(RAW_COLUMNS, part).decode("utf-8").encode("cp1252")
    if kind == "utf16":
        return f"{stem}.csv", b"\xff\xfe" + _csv(RAW_COLUMNS, part).decode().encode("utf-16-le")
    if kind == "epoch":
        for column, seconds in (
            ("courier_location_timestamp", True),
            ("order_created_timestamp", False),
        ):
            position = part.schema.get_field_index(column)
            part = part.set_column(position, column, _epoch(part.column(column), seconds))
        return f"{stem}.csv", _csv(RAW_COLUMNS, part)
    raise ValueError(f"unknown export kind {kind!r}")


def _epoch(text: pa.ChunkedArray, seconds: bool) -> pa.Array:
    """Timestamp text as written by _iso, in epoch seconds with a microsecond fraction or in
    epoch microseconds; any other text (the dirt) stays as it is."""
    text = text.combine_chunks()
    iso = pc.match_substring_regex(text, r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
    stamps = pc.if_else(iso, text, "1970-01-01T00:00:00.000000Z")
    micros = pc.cast(stamps, pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy()
    if seconds:
        whole, fraction = np.divmod(micros, 1_000_000)
        fraction_text = pc.utf8_slice_codeunits(_text(fraction + 1_000_000), 1)
        epoch = pc.binary_join_element_wise(_text(whole), ".", fraction_text, "")
    else:
        epoch = _text(micros)
    return pc.if_else(iso, epoch, text)


def _rng(purpose: int, config: SimulationConfig, *keys: int) -> np.random.Generator:
    # the canonical draw keeps its bytes; every draw keeps the day volumes
    draw = [config.draw] if config.draw and purpose != _NOISE else []
    return np.random.default_rng([purpose, config.seed, _city_key(config.city), *keys, *draw])


# Fields a City had before the catalog: their repr keys the city's random streams, so adding
# fields to City leaves every simulated byte as it was. A later field enters the key only when
# set (a catalog city's ``id``, a ``service_area``); ``first_day`` never does: a day's data does
# not depend on when the city started.
_STREAM_FIELDS = (
    "name",
    "center_lat",
    "center_lon",
    "service_radius_km",
    "implausible_distance_km",
    "timezone",
    "h3_resolution",
    "n_restaurant_clusters",
)
_NOT_IN_STREAM = ("first_day",)


def _city_key(city: City) -> int:
    text = ", ".join(f"{name}={getattr(city, name)!r}" for name in _STREAM_FIELDS)
    for field in dataclasses.fields(City):
        if field.name in _STREAM_FIELDS or field.name in _NOT_IN_STREAM:
            continue
        value = getattr(city, field.name)
        if value != field.default:
            text += f", {field.name}={value!r}"
    return zlib.crc32(f"City({text})".encode())


# ---------------------------------------------------------------------------------------------
# The simulated city through the core pipeline (no Dagster): tests and benchmarks


@dataclass(frozen=True)
class SimulatedCity:
    """What the data assets would hold after materializing the simulated days."""

    hourly: dict[str, pd.DataFrame]
    restaurant_clusters: pd.DataFrame
    features: dict[str, pd.DataFrame]


def clean_pings_of_day(config: SimulationConfig, day: datetime.date) -> pd.DataFrame:
    """The clean pings the ingestion assets would keep of one simulated day."""
    frames = []
    for name, content in simulate_day(config, day).items():
        try:
            frames.append(read_raw_file(name, content))
        except UnparseableFileError:
            continue  # no clean rows: the assets quarantine all rows of such a file
    raw = pd.concat(frames, ignore_index=True)
    return validate_pings(raw, config.city, day.isoformat()).clean


def simulated_city(config: SimulationConfig) -> SimulatedCity:
    """hex_hourly_busyness per day, restaurant clusters, and ``busyness_features`` for every
    simulated day but the first, which only serves as history (as it would for the first
    materialized day)."""
    city = config.city
    days = [config.start_date + datetime.timedelta(days=k) for k in range(config.days)]
    hourly, sightings = {}, {}
    for day in days:
        clean = clean_pings_of_day(config, day)
        hourly[day.isoformat()] = hex_hourly_busyness(clean, city.h3_resolution)
        sightings[day.isoformat()] = restaurant_sightings(clean)
    clusters = cluster_restaurants(
        restaurants_from_sightings(sightings, city.h3_resolution), city.n_restaurant_clusters
    )
    features = {
        day.isoformat(): busyness_features(hourly, day.isoformat(), clusters, city)
        for day in days[1:]
    }
    return SimulatedCity(hourly=hourly, restaurant_clusters=clusters, features=features)
