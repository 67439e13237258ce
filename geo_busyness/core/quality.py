"""Is a day mostly refused? Then something is misconfigured, not dirty: say what."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from geo_busyness.core.city import City
from geo_busyness.core.schema import QuarantineReason

DEFAULT_MAX_QUARANTINE_SHARE = 0.20

# Reasons that, when they refuse most of a day, point at the catalog rather than the data.
_LIKELY_CAUSE = {
    QuarantineReason.IMPLAUSIBLE_LOCATION.value: (
        "check the centre of {city} in the catalog ({catalog}), or whether these files belong "
        "to another city"
    ),
    QuarantineReason.OUTSIDE_SERVICE_AREA.value: (
        "check the centre and service area of {city} in the catalog ({catalog})"
    ),
    QuarantineReason.OUTSIDE_PARTITION_DAY.value: (
        "the files of this day hold pings of other days: check the export's day folders and "
        "time zone (timestamps without an offset are read as UTC)"
    ),
    QuarantineReason.UNPARSEABLE_FILE.value: "the files are not in the contract's format",
    QuarantineReason.UNPARSEABLE_TIMESTAMP.value: "check the export's timestamp format",
}


@dataclass(frozen=True)
class QuarantineVerdict:
    passed: bool
    share: float
    rows: int
    quarantined: int
    top_reason: str | None
    top_reason_share: float
    description: str


def quarantine_verdict(
    rows: int,
    reasons: pd.Series,
    city: City,
    catalog: str,
    max_share: float = DEFAULT_MAX_QUARANTINE_SHARE,
) -> QuarantineVerdict:
    """Whether at most ``max_share`` of the day's ``rows`` were quarantined (``reasons``: one
    per quarantined row); when not, a message naming the main reason and its likely cause.

    Duplicates do not count, on either side: a re-delivered file (common in real exports)
    repeats rows whose first copy is clean, which is nothing lost and nothing misconfigured."""
    duplicates = int((reasons == QuarantineReason.DUPLICATE.value).sum())
    reasons = reasons[reasons != QuarantineReason.DUPLICATE.value]
    rows -= duplicates
    quarantined = len(reasons)
    share = quarantined / rows if rows else 0.0
    counts = reasons.value_counts()
    top = str(counts.index[0]) if len(counts) else None
    top_share = float(counts.iloc[0]) / rows if rows and len(counts) else 0.0
    passed = share <= max_share
    if passed:
        description = f"{share:.1%} of {rows} rows quarantined (at most {max_share:.0%} allowed)"
    else:
        cause = _LIKELY_CAUSE.get(top, "read the quarantined rows' details")
        description = (
            f"{share:.1%} of {rows} rows quarantined (more than {max_share:.0%}); "
            f"{top_share:.0%} of rows {top} for {city.id}: "
            + cause.format(city=city.id, catalog=catalog)
        )
    return QuarantineVerdict(passed, share, rows, quarantined, top, top_share, description)
