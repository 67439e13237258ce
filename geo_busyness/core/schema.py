"""Raw courier-ping data contract and its vectorized validator.

Raw files are read with every column as text so that a quarantined row keeps exactly what
arrived. Validation is column-wise (pandas/numpy), never row by row. Every input row ends in
exactly one of *clean* or *quarantine*; a file that cannot be parsed at all becomes one
quarantine record naming the file and the problem.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from geo_busyness.core.city import City
from geo_busyness.core.geo import haversine_km

RAW_COLUMNS: tuple[str, ...] = (
    "courier_id",
    "order_number",
    "courier_location_timestamp",
    "courier_lat",
    "courier_lon",
    "order_created_timestamp",
    "restaurant_lat",
    "restaurant_lon",
)
TIMESTAMP_COLUMNS = ("courier_location_timestamp", "order_created_timestamp")
LAT_COLUMNS = ("courier_lat", "restaurant_lat")
LON_COLUMNS = ("courier_lon", "restaurant_lon")
COORDINATE_COLUMNS = (*LAT_COLUMNS, *LON_COLUMNS)
# Lineage columns added on read: which file and which data row (0-based) a record came from,
# and, for a file that could not be parsed, the error.
SOURCE_COLUMNS = ("source_file", "source_row", "file_error")

# Text values that mean "no value" in real exports ("NaN " with a trailing blank included).
MISSING_TOKENS = frozenset({"", "nan", "none", "null", "na", "n/a", "-"})

# An order may be stamped a little after the ping because clocks of phone and backend differ.
ORDER_AFTER_PING_TOLERANCE = pd.Timedelta(minutes=5)

CLEAN_DTYPES: dict[str, str] = {
    "courier_id": "string",
    "order_number": "string",
    "courier_location_timestamp": "datetime64[ns, UTC]",
    "courier_lat": "float64",
    "courier_lon": "float64",
    "order_created_timestamp": "datetime64[ns, UTC]",
    "restaurant_lat": "float64",
    "restaurant_lon": "float64",
    "source_file": "string",
    "source_row": "int64",
}


class QuarantineReason(StrEnum):
    """Why a row was refused; the first failing rule in this order wins."""

    UNPARSEABLE_FILE = "unparseable_file"
    MISSING_VALUE = "missing_value"
    UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
    UNPARSEABLE_NUMBER = "unparseable_number"
    OUT_OF_RANGE = "out_of_range"
    NULL_ISLAND = "null_island"
    IMPLAUSIBLE_LOCATION = "implausible_location"
    ORDER_AFTER_PING = "order_after_ping"
    OUTSIDE_PARTITION_DAY = "outside_partition_day"
    DUPLICATE = "duplicate"


QUARANTINE_COLUMNS = (*RAW_COLUMNS, *SOURCE_COLUMNS, "reason", "detail")


class UnparseableFileError(ValueError):
    """A raw file whose content cannot be read as the ping contract at all."""


@dataclass(frozen=True)
class ValidationResult:
    clean: pd.DataFrame
    quarantined: pd.DataFrame

    def reason_counts(self) -> dict[str, int]:
        counts = self.quarantined["reason"].value_counts()
        return {reason.value: int(counts.get(reason.value, 0)) for reason in QuarantineReason}


def read_raw_file(name: str, content: bytes) -> pd.DataFrame:
    """Parse one landing file (CSV or Parquet) into text columns plus lineage.

    Raises :class:`UnparseableFileError` naming the file and the problem when the content
    is not a table with the contract's columns. Header names are matched case- and
    blank-insensitively; extra columns are dropped.
    """
    if not content.strip():
        return _empty_raw_frame()
    try:
        if name.endswith(".parquet"):
            table = pd.read_parquet(io.BytesIO(content))
            table = table.astype("string")
        else:
            table = pd.read_csv(
                io.BytesIO(content),
                dtype="string",
                keep_default_na=False,
                na_filter=False,
                skipinitialspace=False,
            )
    except Exception as error:
        raise UnparseableFileError(f"{name}: cannot be parsed ({type(error).__name__}: {error})") from error
    table.columns = [str(column).strip().lower() for column in table.columns]
    missing = [column for column in RAW_COLUMNS if column not in table.columns]
    if missing:
        raise UnparseableFileError(
            f"{name}: missing required columns {missing}; found columns {list(table.columns)}"
        )
    frame = table.loc[:, list(RAW_COLUMNS)].astype("string")
    frame["source_file"] = pd.array([name] * len(frame), dtype="string")
    frame["source_row"] = np.arange(len(frame), dtype="int64")
    frame["file_error"] = pd.array([pd.NA] * len(frame), dtype="string")
    return frame.reset_index(drop=True)


def unparseable_file_record(name: str, error: str) -> pd.DataFrame:
    """One raw record standing for a whole unreadable file, so it reaches quarantine."""
    frame = _empty_raw_frame(rows=1)
    frame["source_file"] = pd.array([name], dtype="string")
    frame["source_row"] = np.array([-1], dtype="int64")
    frame["file_error"] = pd.array([error], dtype="string")
    return frame


def _empty_raw_frame(rows: int = 0) -> pd.DataFrame:
    frame = pd.DataFrame(
        {column: pd.array([pd.NA] * rows, dtype="string") for column in (*RAW_COLUMNS, "source_file", "file_error")}
    )
    frame["source_row"] = np.zeros(rows, dtype="int64")
    return frame.loc[:, [*RAW_COLUMNS, *SOURCE_COLUMNS]]


def validate_pings(raw: pd.DataFrame, city: City, partition_day: str | None = None) -> ValidationResult:
    """Split raw text rows into typed clean rows and quarantined rows with a reason.

    ``partition_day`` (YYYY-MM-DD, UTC) quarantines pings stamped on another day, so a day
    partition only ever holds its own hours.
    """
    raw = raw.reset_index(drop=True)
    n = len(raw)
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, why: QuarantineReason, text: np.ndarray | str) -> None:
        new = mask & (reason == "")
        reason[new] = why.value
        detail[new] = text[new] if isinstance(text, np.ndarray) else text

    flag(
        raw["file_error"].notna().to_numpy(dtype=bool),
        QuarantineReason.UNPARSEABLE_FILE,
        raw["file_error"].to_numpy(dtype=object, na_value=""),
    )

    text = {column: raw[column].str.strip() for column in RAW_COLUMNS}
    for column in RAW_COLUMNS:
        missing = text[column].isna() | text[column].str.lower().isin(MISSING_TOKENS)
        flag(missing.to_numpy(dtype=bool), QuarantineReason.MISSING_VALUE, f"{column} is empty")

    parsed_time = {}
    for column in TIMESTAMP_COLUMNS:
        parsed = pd.to_datetime(text[column], utc=True, errors="coerce", format="ISO8601")
        parsed_time[column] = parsed
        flag(parsed.isna().to_numpy(), QuarantineReason.UNPARSEABLE_TIMESTAMP, f"{column} is not ISO-8601")

    numbers = {}
    for column in COORDINATE_COLUMNS:
        number = pd.to_numeric(text[column], errors="coerce").astype("float64")
        numbers[column] = number.to_numpy()
        flag(~np.isfinite(numbers[column]), QuarantineReason.UNPARSEABLE_NUMBER, f"{column} is not a number")

    for column in LAT_COLUMNS:
        flag(np.abs(numbers[column]) > 90, QuarantineReason.OUT_OF_RANGE, f"{column} outside -90..90")
    for column in LON_COLUMNS:
        flag(np.abs(numbers[column]) > 180, QuarantineReason.OUT_OF_RANGE, f"{column} outside -180..180")

    for lat, lon in (("courier_lat", "courier_lon"), ("restaurant_lat", "restaurant_lon")):
        zero = (numbers[lat] == 0) & (numbers[lon] == 0)
        flag(zero, QuarantineReason.NULL_ISLAND, f"({lat}, {lon}) is (0, 0)")
        km = haversine_km(numbers[lat], numbers[lon], city.center_lat, city.center_lon)
        far = km > city.implausible_distance_km
        flag(
            far,
            QuarantineReason.IMPLAUSIBLE_LOCATION,
            np.char.add(f"{lat.split('_')[0]} is ", np.char.add(np.round(km, 1).astype(str), f" km from {city.name}")),
        )

    ping_time = parsed_time["courier_location_timestamp"]
    order_time = parsed_time["order_created_timestamp"]
    late_order = (order_time - ping_time > ORDER_AFTER_PING_TOLERANCE).fillna(False).to_numpy(dtype=bool)
    flag(late_order, QuarantineReason.ORDER_AFTER_PING, "order created after the ping beyond tolerance")

    if partition_day is not None:
        day = ping_time.dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
        other_day = (day != partition_day) & ping_time.notna().to_numpy()
        flag(other_day, QuarantineReason.OUTSIDE_PARTITION_DAY, f"ping not on {partition_day} (UTC)")

    typed = pd.DataFrame(
        {
            "courier_id": text["courier_id"],
            "order_number": text["order_number"],
            "courier_location_timestamp": ping_time,
            "courier_lat": numbers["courier_lat"],
            "courier_lon": numbers["courier_lon"],
            "order_created_timestamp": order_time,
            "restaurant_lat": numbers["restaurant_lat"],
            "restaurant_lon": numbers["restaurant_lon"],
            "source_file": raw["source_file"],
            "source_row": raw["source_row"].astype("int64"),
        }
    )
    # Duplicates are judged on parsed values, among rows that are otherwise valid, so that a
    # re-delivered file or a repeated row keeps its first copy only.
    valid_so_far = reason == ""
    duplicated = np.zeros(n, dtype=bool)
    if valid_so_far.any():
        candidates = typed.loc[valid_so_far, list(RAW_COLUMNS)]
        duplicated[np.flatnonzero(valid_so_far)] = candidates.duplicated(keep="first").to_numpy()
    flag(duplicated, QuarantineReason.DUPLICATE, "identical to an earlier ping")

    is_clean = reason == ""
    clean = typed.loc[is_clean].reset_index(drop=True).astype(CLEAN_DTYPES)
    quarantined = raw.loc[~is_clean, [*RAW_COLUMNS, *SOURCE_COLUMNS]].reset_index(drop=True)
    quarantined["reason"] = pd.array(reason[~is_clean], dtype="string")
    quarantined["detail"] = pd.array(detail[~is_clean], dtype="string")
    return ValidationResult(clean=clean, quarantined=quarantined)


def schema_problems(clean: pd.DataFrame) -> list[str]:
    """Differences between a clean frame and the contract's typed schema (empty when it conforms)."""
    problems = []
    for column, dtype in CLEAN_DTYPES.items():
        if column not in clean.columns:
            problems.append(f"missing column {column}")
        elif str(clean[column].dtype) != dtype:
            problems.append(f"{column} has dtype {clean[column].dtype}, expected {dtype}")
    extra = sorted(set(clean.columns) - set(CLEAN_DTYPES))
    if extra:
        problems.append(f"unexpected columns {extra}")
    return problems
