"""Daily partitions (UTC days, as in the landing zone's ``dt=`` folders).

The days run from ``GEO_BUSYNESS_START_DATE`` to the last complete UTC day, moving with the
clock; ``GEO_BUSYNESS_END_DATE`` stops them at a fixed last day instead (inclusive), to replay a
historical export as if it were current: that day is then the latest partition, which forecasts,
drift reports and the freshness check treat as "yesterday".
"""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg

from geo_busyness.resources.settings import END_DATE_ENV, START_DATE_ENV

DEFAULT_START_DATE = "2025-01-01"


def _day_setting(name: str, default: str | None) -> dt.date | None:
    value = os.environ.get(name) or default
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be a day as YYYY-MM-DD, got {value!r}") from None


def _daily_partitions() -> dg.DailyPartitionsDefinition:
    start = _day_setting(START_DATE_ENV, DEFAULT_START_DATE)
    last = _day_setting(END_DATE_ENV, None)
    if last is not None and last < start:
        raise ValueError(f"{END_DATE_ENV}={last} is before {START_DATE_ENV}={start}")
    return dg.DailyPartitionsDefinition(
        start_date=start.isoformat(),
        # Dagster's end_date is exclusive.
        end_date=(last + dt.timedelta(days=1)).isoformat() if last else None,
        timezone="UTC",
    )


daily_partitions = _daily_partitions()


def latest_complete_day() -> dt.date | None:
    """The newest partition day as of now (``None`` before the first day has ended)."""
    key = daily_partitions.get_last_partition_key()
    return dt.date.fromisoformat(key) if key else None
