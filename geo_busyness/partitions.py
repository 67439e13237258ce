"""Daily partitions per city (UTC days, as in the landing zone's ``dt=`` folders).

A city's days run from its catalog ``first_day`` (else the oldest day landed for it when the
definitions were built, else ``GEO_BUSYNESS_START_DATE``) to the last complete UTC day, moving with the clock; ``GEO_BUSYNESS_END_DATE`` stops them at a fixed last
day instead (inclusive), to replay a historical export as if it were current: that day is then
the latest partition, which forecasts, drift reports and the freshness check treat as
"yesterday". Each city has its own definition, so a city onboarded with two weeks of data shows
two weeks of partitions, not every day since the first city started.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import warnings

import dagster as dg

from geo_busyness.core.city import City
from geo_busyness.resources.settings import END_DATE_ENV, START_DATE_ENV

DEFAULT_START_DATE = "2025-01-01"


def window_mapping(start_offset: int, end_offset: int = 0) -> dg.TimeWindowPartitionMapping:
    """A window of upstream days that may reach before a city's first day (its first weeks
    have less history: the assets read what exists). Dagster marks
    ``allow_nonexistent_upstream_partitions`` beta; we rely on it on purpose, so its warning is
    silenced here instead of on every console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.TimeWindowPartitionMapping(
            start_offset=start_offset,
            end_offset=end_offset,
            allow_nonexistent_upstream_partitions=True,
        )


def _day_setting(name: str, default: str | None) -> dt.date | None:
    value = os.environ.get(name) or default
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be a day as YYYY-MM-DD, got {value!r}") from None


def first_day(city: City) -> dt.date:
    """The city's first partition day: its catalog ``first_day``, else its first landed day,
    else the global setting."""
    return (
        city.first_day or city.first_landed_day or _day_setting(START_DATE_ENV, DEFAULT_START_DATE)
    )


def last_day_setting() -> dt.date | None:
    return _day_setting(END_DATE_ENV, None)


@functools.cache
def _daily(start: dt.date, last: dt.date | None) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=start.isoformat(),
        # Dagster's end_date is exclusive.
        end_date=(last + dt.timedelta(days=1)).isoformat() if last else None,
        timezone="UTC",
    )


def city_partitions(city: City) -> dg.DailyPartitionsDefinition:
    """The days of ``city``: from :func:`first_day` to the last complete day (or the end date)."""
    start, last = first_day(city), last_day_setting()
    if last is not None and last < start:
        source = (
            f"first_day of city {city.id!r}"
            if city.first_day
            else f"the first landed day of {city.id}"
            if city.first_landed_day
            else START_DATE_ENV
        )
        raise ValueError(f"{END_DATE_ENV}={last} is before {source}={start}")
    return _daily(start, last)


def day_range_problem(city: City, day: str) -> str | None:
    """Why ``day`` is not a partition of ``city`` (naming the setting to change), or None."""
    partitions = city_partitions(city)
    if partitions.has_partition_key(day):
        return None
    start = first_day(city)
    if dt.date.fromisoformat(day) < start:
        if city.first_day:
            fix = f"lower first_day of {city.id} in the catalog"
        elif city.first_landed_day:
            fix = (
                f"the oldest day landed for {city.id} when the code location loaded: reload it "
                f"to take older days, or give {city.id} a first_day in the catalog"
            )
        else:
            fix = f"set {START_DATE_ENV} earlier, or give {city.id} a first_day in the catalog"
        return f"{day} is before {start}, the first day of {city.id}: {fix}"
    last = partitions.get_last_partition_key()
    if last is None or day > last:
        return (
            f"{day} is after {last or 'today'}, the last complete day of {city.id} "
            f"({END_DATE_ENV} or the clock)"
        )
    return f"{day} is not a day of {city.id}"


def latest_complete_day(city: City) -> dt.date | None:
    """The city's newest partition day as of now (``None`` before the first day has ended)."""
    key = city_partitions(city).get_last_partition_key()
    return dt.date.fromisoformat(key) if key else None


def export_partitions(cities) -> dg.DailyPartitionsDefinition:
    """Days of the export of every city (``raw/dt=``): from the earliest city's first day."""
    start, last = min(first_day(city) for city in cities), last_day_setting()
    if last is not None and last < start:
        raise ValueError(f"{END_DATE_ENV}={last} is before the first day of every city ({start})")
    return _daily(start, last)
