"""Daily partitions (UTC days, as in the landing zone's ``dt=`` folders)."""

from __future__ import annotations

import os

import dagster as dg

START_DATE_ENV = "GEO_BUSYNESS_START_DATE"
DEFAULT_START_DATE = "2025-01-01"

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get(START_DATE_ENV, DEFAULT_START_DATE), timezone="UTC"
)
