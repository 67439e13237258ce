"""Request bodies (JSON or CSV) → validated (H3 cell, UTC hour) keys, with no HTTP in sight.

An instance names a hexagon (``h3_cell``) or a coordinate (``lat``, ``lon``), and a
``timestamp``. Parsing is columnar (Arrow builds the columns from the decoded JSON or the CSV
in C++), so a batch costs a handful of vectorized calls whatever its size. The two
per-instance Python loops run only off that path: ``_first_invalid_instance`` to explain a body
Arrow refused, ``_hours_one_by_one`` for a batch mixing zoned and zoneless timestamps.

Every problem becomes a ``RequestError`` that names the field and the instance (0-based), so
the HTTP layer only has to turn it into a status and a JSON body.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import h3ronpy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from geo_busyness.core.features import HOUR_NS
from geo_busyness.core.geo import cells_for

JSON_MEDIA_TYPE = "application/json"
CSV_MEDIA_TYPE = "text/csv"
CELL_FIELD, LAT_FIELD, LON_FIELD, TIME_FIELD = "h3_cell", "lat", "lon", "timestamp"
INSTANCE_FIELDS = (CELL_FIELD, LAT_FIELD, LON_FIELD, TIME_FIELD)
STRING_FIELDS = (CELL_FIELD, TIME_FIELD)
NUMBER_FIELDS = (LAT_FIELD, LON_FIELD)
COORDINATE_LIMITS = {LAT_FIELD: 90.0, LON_FIELD: 180.0}
UTF8_BOM = b"\xef\xbb\xbf"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Shown in every error about the shape of a request.
JSON_SHAPE = (
    '{"instances": [{"h3_cell": "87...", "timestamp": "2025-01-01T10:00:00Z"}, '
    '{"lat": 50.45, "lon": -104.6, "timestamp": "..."}]}'
)
CSV_HEADERS = "h3_cell,timestamp or lat,lon,timestamp"


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one request: SageMaker itself caps real-time payloads at 6 MB."""

    max_body_bytes: int = 5 * 1024 * 1024
    max_instances: int = 50_000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming what is wrong."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, instance: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.instance = instance

    def to_dict(self) -> dict:
        """The ``error`` object of a response body (``field``/``instance`` only when known)."""
        body: dict = {"status": self.status, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.instance is not None:
            body["instance"] = self.instance
        return body


@dataclass(frozen=True, eq=False)
class Instances:
    """Validated instances: their H3 cell (uint64) and UTC hour (ns since epoch, floored)."""

    cells: np.ndarray
    hour_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.cells)


# Says where an instance's field is, in the words of the request's format.
Locator = Callable[[int, str | None], str]


def _json_location(instance: int, field: str | None) -> str:
    return f"instances[{instance}]" + (f".{field}" if field else "")


def _csv_location(instance: int, field: str | None) -> str:
    return f"CSV row {instance} (0-based, after the header)" + (
        f", column {field}" if field else ""
    )


def media_type(content_type: str | None) -> str:
    """``'Application/JSON; charset=utf-8'`` → ``'application/json'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_request(
    body: bytes, content_type: str | None, resolution: int, limits: RequestLimits
) -> Instances:
    """Parse and validate a body of the given Content-Type; ``RequestError`` when refused."""
    kind = media_type(content_type)
    if kind == JSON_MEDIA_TYPE:
        return parse_json(body, resolution, limits.max_instances)
    if kind == CSV_MEDIA_TYPE:
        return parse_csv(body, resolution, limits.max_instances)
    raise RequestError(
        415,
        f"unsupported Content-Type {content_type!r}: send {JSON_MEDIA_TYPE} or {CSV_MEDIA_TYPE}",
        field="Content-Type",
    )


# ---------------------------------------------------------------------------------------------
# JSON


def parse_json(body: bytes, resolution: int, max_instances: int) -> Instances:
    """``{"instances": [...]}`` → ``Instances``."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"malformed JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(document, dict) or "instances" not in document:
        raise RequestError(400, f"the body must be a JSON object like {JSON_SHAPE}")
    instances = document["instances"]
    if not isinstance(instances, list):
        raise RequestError(
            400, f"instances must be a list, got {type(instances).__name__}", field="instances"
        )
    _check_count(len(instances), max_instances)
    try:
        table = pa.array(instances)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as error:
        problem = _first_invalid_instance(instances)
        if problem is not None:
            raise problem from None
        # Our fields are fine; some other field mixes types Arrow cannot unify: ignore it.
        columns = _columns_one_by_one(instances, error)
    else:
        if not pa.types.is_struct(table.type) or table.null_count:
            raise _first_invalid_instance(instances) or _unreadable(None)
        columns = {}
        for name in INSTANCE_FIELDS:
            position = table.type.get_field_index(name)
            if position < 0:
                continue
            column = table.field(position)
            if not _acceptable(name, column.type):
                raise _first_invalid_instance(instances) or _unreadable(None)
            columns[name] = column.cast(_ARROW_TYPES[name])
    return _resolve(columns, len(instances), resolution, _json_location)


_ARROW_TYPES = {
    CELL_FIELD: pa.string(),
    TIME_FIELD: pa.string(),
    LAT_FIELD: pa.float64(),
    LON_FIELD: pa.float64(),
}


def _acceptable(name: str, arrow_type: pa.DataType) -> bool:
    """Whether Arrow's inferred type of a field is one we read (all-null is)."""
    if pa.types.is_null(arrow_type):
        return True
    if name in STRING_FIELDS:
        return pa.types.is_string(arrow_type)
    return pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)


def _unreadable(arrow_error: BaseException | None) -> RequestError:
    return RequestError(400, f"could not read instances: {arrow_error}", field="instances")


def _columns_one_by_one(instances: list[dict], arrow_error: BaseException) -> dict[str, pa.Array]:
    """Slow path: our fields one at a time, when another field kept Arrow from the whole."""
    try:
        return {
            name: pa.array([instance.get(name) for instance in instances], type=kind)
            for name, kind in _ARROW_TYPES.items()
        }
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        raise _unreadable(arrow_error) from None


def _first_invalid_instance(instances: list) -> RequestError | None:
    """Error path only: walk the instances to name the first one whose fields we cannot take."""
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            return RequestError(
                400,
                f"{_json_location(index, None)} must be a JSON object, got {json.dumps(instance)}",
                instance=index,
            )
        for name in STRING_FIELDS:
            value = instance.get(name)
            if value is not None and not isinstance(value, str):
                return RequestError(
                    400,
                    f"{_json_location(index, name)} must be a string, got {json.dumps(value)}",
                    field=name,
                    instance=index,
                )
        for name in NUMBER_FIELDS:
            value = instance.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                return RequestError(
                    400,
                    f"{_json_location(index, name)} must be a number, got {json.dumps(value)}",
                    field=name,
                    instance=index,
                )
            limit = COORDINATE_LIMITS[name]
            if not (isinstance(value, int) or math.isfinite(value)) or abs(value) > limit:
                return RequestError(
                    400,
                    f"{_json_location(index, name)}: {value} is outside [-{limit:g}, {limit:g}]",
                    field=name,
                    instance=index,
                )
    return None


# ---------------------------------------------------------------------------------------------
# CSV


def parse_csv(body: bytes, resolution: int, max_instances: int) -> Instances:
    """A CSV with a header (``h3_cell,timestamp`` or ``lat,lon,timestamp``) → ``Instances``."""
    body = body.removeprefix(UTF8_BOM)
    header = body.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        names = [name.strip() for name in next(csv.reader([header.decode("utf-8")]), [])]
    except UnicodeDecodeError as error:
        raise RequestError(400, f"malformed CSV: the header is not UTF-8 ({error})") from None
    if not any(names):
        raise RequestError(400, f"empty CSV: expected a header line {CSV_HEADERS}")
    missing = _missing_csv_column(set(names))
    if missing:
        raise RequestError(
            400,
            f"the CSV header must be {CSV_HEADERS}; {header.decode()!r} lacks {missing[1]}",
            field=missing[0],
        )
    if len(set(names)) != len(names):
        raise RequestError(400, f"the CSV header repeats a column: {header.decode()!r}")
    present = [name for name in INSTANCE_FIELDS if name in names]
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(body),
            # One thread: a body is at most a few MB, and waking Arrow's pool costs more than
            # it saves on a shared 2-core machine.
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1, use_threads=False),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                include_columns=present,
                strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except pa.ArrowException as error:
        raise RequestError(400, f"malformed CSV: {error}") from None
    _check_count(table.num_rows, max_instances)
    columns = {name: table.column(name).combine_chunks() for name in present}
    for name in NUMBER_FIELDS:
        if name in columns:
            columns[name] = _csv_numbers(columns[name], name)
    return _resolve(columns, table.num_rows, resolution, _csv_location)


def _missing_csv_column(names: set[str]) -> tuple[str, str] | None:
    """``(field, what to add)`` for the first required column the header lacks."""
    if TIME_FIELD not in names:
        return TIME_FIELD, TIME_FIELD
    if CELL_FIELD in names or set(NUMBER_FIELDS) <= names:
        return None
    if LAT_FIELD in names:
        return LON_FIELD, LON_FIELD
    if LON_FIELD in names:
        return LAT_FIELD, LAT_FIELD
    return CELL_FIELD, "h3_cell (or lat and lon)"


def _csv_numbers(column: pa.Array, name: str) -> pa.Array:
    """Text → float64, naming the first cell that is not a number."""
    try:
        return column.cast(pa.float64())
    except pa.ArrowInvalid:
        text = column.to_numpy(zero_copy_only=False)
        numbers = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce")
        bad = np.flatnonzero(numbers.isna().to_numpy() & pd.notna(text))
        if len(bad):
            index = int(bad[0])
            raise RequestError(
                400,
                f"{_csv_location(index, name)} must be a number, got {text[index]!r}",
                field=name,
                instance=index,
            ) from None
        return pa.array(numbers.to_numpy("float64"), mask=pd.isna(text))


# ---------------------------------------------------------------------------------------------
# Both formats


def _check_count(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise RequestError(
            413,
            f"{count} instances in one request; at most {max_instances} are accepted",
            field="instances",
        )
    if count == 0:
        raise RequestError(400, "no instances to forecast", field="instances")


def _fail_at(
    mask: np.ndarray, status: int, field: str, problem: Callable[[int], str], where: Locator
) -> None:
    """Raise for the first instance where ``mask`` holds, counting the others."""
    offenders = np.flatnonzero(mask)
    if len(offenders) == 0:
        return
    index = int(offenders[0])
    others = f" (and {len(offenders) - 1} more instances)" if len(offenders) > 1 else ""
    raise RequestError(
        status, f"{where(index, field)}: {problem(index)}{others}", field=field, instance=index
    )


def _present(columns: dict[str, pa.Array], name: str, n: int) -> np.ndarray:
    column = columns.get(name)
    if column is None:
        return np.zeros(n, dtype=bool)
    return column.is_valid().to_numpy(zero_copy_only=False)


def _resolve(columns: dict[str, pa.Array], n: int, resolution: int, where: Locator) -> Instances:
    """Columns of either format → validated ``Instances``."""
    has_time = _present(columns, TIME_FIELD, n)
    has_cell = _present(columns, CELL_FIELD, n)
    has_lat = _present(columns, LAT_FIELD, n)
    has_lon = _present(columns, LON_FIELD, n)
    _fail_at(~has_time, 400, TIME_FIELD, lambda i: "missing", where)
    _fail_at(
        has_cell & (has_lat | has_lon),
        400,
        CELL_FIELD,
        lambda i: "give either h3_cell or lat and lon, not both",
        where,
    )
    _fail_at(
        ~(has_cell | has_lat | has_lon),
        400,
        CELL_FIELD,
        lambda i: "missing (or lat and lon)",
        where,
    )
    _fail_at(has_lat & ~has_lon, 400, LON_FIELD, lambda i: "missing (lat is given)", where)
    _fail_at(has_lon & ~has_lat, 400, LAT_FIELD, lambda i: "missing (lon is given)", where)

    cells = np.zeros(n, dtype="uint64")
    if has_cell.any():
        cells[has_cell] = _parse_cells(columns[CELL_FIELD], has_cell, resolution, where)
    if has_lat.any():
        cells[has_lat] = _cells_of_coordinates(columns, has_lat, resolution, where)
    return Instances(cells=cells, hour_ns=_floored_hours(columns[TIME_FIELD], where))


def _parse_cells(column: pa.Array, rows: np.ndarray, resolution: int, where: Locator) -> np.ndarray:
    """H3 strings of ``rows`` → uint64, refusing non-cells and cells of another resolution."""
    selected = column if rows.all() else column.filter(pa.array(rows))
    positions = np.flatnonzero(rows)
    parsed = np.asarray(
        pa.array(h3ronpy.cells_parse(selected, set_failing_to_invalid=True)).fill_null(0), "uint64"
    )
    text = selected.to_numpy(zero_copy_only=False)
    invalid = np.zeros(len(rows), dtype=bool)
    invalid[positions] = parsed == 0
    _fail_at(
        invalid,
        400,
        CELL_FIELD,
        lambda i: f"{text[np.searchsorted(positions, i)]!r} is not a valid H3 cell",
        where,
    )
    levels = np.asarray(pa.array(h3ronpy.cells_resolution(pa.array(parsed))), "int64")
    other = np.zeros(len(rows), dtype=bool)
    other[positions] = levels != resolution
    _fail_at(
        other,
        400,
        CELL_FIELD,
        lambda i: (
            f"{text[np.searchsorted(positions, i)]!r} is a resolution "
            f"{levels[np.searchsorted(positions, i)]} cell; this model forecasts resolution "
            f"{resolution} cells"
        ),
        where,
    )
    return parsed


def _cells_of_coordinates(
    columns: dict[str, pa.Array], rows: np.ndarray, resolution: int, where: Locator
) -> np.ndarray:
    values = {}
    for name in NUMBER_FIELDS:
        value = columns[name].to_numpy(zero_copy_only=False)
        limit = COORDINATE_LIMITS[name]
        _fail_at(
            rows & ~(np.abs(value) <= limit),  # NaN and inf fail the comparison too
            400,
            name,
            lambda i, value=value, limit=limit: f"{value[i]} is outside [-{limit:g}, {limit:g}]",
            where,
        )
        values[name] = value[rows]
    return cells_for(values[LAT_FIELD], values[LON_FIELD], resolution)


def _floored_hours(column: pa.Array, where: Locator) -> np.ndarray:
    """ISO-8601 strings → ns since epoch floored to the UTC hour; a time without a zone is UTC.

    Arrow parses a batch whose timestamps all carry a zone, or all lack one, in C++; only a
    batch that mixes the two (or uses a form Arrow lacks) is parsed string by string, because
    pandas would silently apply one string's offset to the zoneless others.
    """
    for target in (pa.timestamp("ns", "UTC"), pa.timestamp("ns")):
        try:
            ns = column.cast(target).cast(pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowException:
            continue
        return ns // HOUR_NS * HOUR_NS
    return _hours_one_by_one(column.to_pylist(), where) // HOUR_NS * HOUR_NS


def _hours_one_by_one(texts: list[str], where: Locator) -> np.ndarray:
    """The slow path: Python's ISO-8601 parser per string, so each keeps its own zone."""
    ns = np.empty(len(texts), dtype="int64")
    for index, text in enumerate(texts):
        try:
            stamp = dt.datetime.fromisoformat(text)
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            ns[index] = (stamp - EPOCH) // dt.timedelta(microseconds=1) * 1000
        except (ValueError, OverflowError):
            raise RequestError(
                400,
                f"{where(index, TIME_FIELD)}: {text!r} is not an ISO-8601 timestamp",
                field=TIME_FIELD,
                instance=index,
            ) from None
    return ns
