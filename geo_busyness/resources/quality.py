"""How much of a day may be refused before its features and training stop."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from geo_busyness.core.quality import DEFAULT_MAX_QUARANTINE_SHARE


class DataQualityPolicy(dg.ConfigurableResource):
    """Above ``max_quarantine_share`` a day is held back: the blocking check on its clean pings
    fails, so its busyness, features and the trainings that would read them wait for a fix."""

    max_quarantine_share: float = Field(
        default=DEFAULT_MAX_QUARANTINE_SHARE,
        ge=0.0,
        le=1.0,
        description="Largest share of a city-day's rows that may be quarantined (0.2 = 20%).",
    )
