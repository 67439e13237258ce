"""Request bodies (JSON or CSV) → validated (H3 cell, UTC hour) keys, with no HTTP in sight.

An instance names a hexagon (``h3_cell``) or a coordinate (``lat``, ``lon``), and a
``timestamp``. Parsing is columnar: the decoded JSON gives up its four fields as four lists (one
comprehension each, so a field the server does not know costs nothing, whatever its name or
shape), Arrow builds the columns from those lists or from the CSV in C++, and the rest is a
handful of vectorized calls whatever the batch size. The per-instance Python loops run only off
that path: ``_first_invalid_instance`` to explain a column Arrow refused, ``_hours_one_by_one``
for a batch mixing zoned and zoneless timestamps.

Every cost is bounded: a vectorized scan of the bytes refuses, before decoding, JSON nested
deeper or holding more arrays, objects or values than ``RequestLimits`` allows; integers longer
than Python converts are read as the out-of-range numbers they are; timestamps whose hour lies
outside the 64-bit nanosecond range are refused with a message that says so.

Parsed for one resolution (a single-city bundle), coordinates become cells at once; parsed for
several (a multi-city bundle, ``resolution`` a tuple), cells of any of them are accepted and
coordinates are kept as ``(lat, lon)``, since which resolution applies depends on the city
the router finds them in.

Every problem becomes a ``RequestError`` that names the field (``body`` for the body as a whole)
and the instance (0-based), so the HTTP layer only has to turn it into a status and a JSON body.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import h3ronpy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from geo_busyness.core.features import HOUR_NS
from geo_busyness.core.geo import cells_for
from geo_busyness.core.schema import header_name

JSON_MEDIA_TYPE = "application/json"
CSV_MEDIA_TYPE = "text/csv"
CELL_FIELD, LAT_FIELD, LON_FIELD, TIME_FIELD = "h3_cell", "lat", "lon", "timestamp"
INSTANCE_FIELDS = (CELL_FIELD, LAT_FIELD, LON_FIELD, TIME_FIELD)
STRING_FIELDS = (CELL_FIELD, TIME_FIELD)
NUMBER_FIELDS = (LAT_FIELD, LON_FIELD)
COORDINATE_LIMITS = {LAT_FIELD: 90.0, LON_FIELD: 180.0}
UTF8_BOM = b"\xef\xbb\xbf"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
BODY_FIELD = "body"  # the ``field`` of an error about the body as a whole
EXPLAIN_FIELD = "explain"  # top-level JSON flag: return SHAP contributions with predictions
# Exact tree SHAP costs ~0.25 ms per instance with the demo model (scripts/bench_serving.py):
# an explained batch is bounded to keep its answer within a fraction of a second.
MAX_EXPLAINED_INSTANCES = 1_000
# Hours since the epoch whose start is a 64-bit nanosecond count: what ``Instances`` holds.
_INT64 = np.iinfo(np.int64)
MIN_HOUR = -(-_INT64.min // HOUR_NS)
MAX_HOUR = _INT64.max // HOUR_NS
HOUR_US = HOUR_NS // 1000
TIME_RANGE = "1677-09-21T01:00:00Z to 2262-04-11T23:59:59Z"
# Shown in every error about the shape of a request.
JSON_SHAPE = (
    '{"instances": [{"h3_cell": "87...", "timestamp": "2025-01-01T10:00:00Z"}, '
    '{"lat": 50.45, "lon": -104.6, "timestamp": "..."}]}'
)
CSV_HEADERS = "h3_cell,timestamp or lat,lon,timestamp"


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one request: SageMaker itself caps real-time payloads at 6 MB.

    The JSON bounds keep decoding cheap (``json.loads`` holds the GIL, so its time is time the
    event loop waits): ``max_depth`` counts nested arrays and objects, the envelope included
    (``{"instances": [{...}]}`` is 3 deep); ``max_containers`` counts all arrays and objects
    (one per instance, so a full batch may still carry three more per instance);
    ``max_values`` counts every value, container or not (a full batch of four fields per
    instance is 250,000).
    """

    max_body_bytes: int = 5 * 1024 * 1024
    max_instances: int = 50_000
    max_depth: int = 32
    max_containers: int = 200_000
    max_values: int = 1_000_000

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) < 1:
                raise ValueError(f"{item.name} must be >= 1, got {getattr(self, item.name)!r}")


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


# One resolution (a single-city bundle) or the distinct resolutions of a multi-city bundle.
Resolution = int | tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Instances:
    """Validated instances: their H3 cell (uint64) and UTC hour (ns since epoch, floored).

    Parsed for several resolutions, ``coordinates`` marks the instances given as ``lat``/``lon``
    (their ``cells`` are 0 and ``lat``/``lon`` hold the validated degrees); else all are None.
    """

    cells: np.ndarray
    hour_ns: np.ndarray
    coordinates: np.ndarray | None = None
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    explain: bool = False  # ``"explain": true``: each prediction's SHAP contributions too

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
    body: bytes, content_type: str | None, resolution: Resolution, limits: RequestLimits
) -> Instances:
    """Parse and validate a body of the given Content-Type; ``RequestError`` when refused."""
    kind = media_type(content_type)
    if kind == JSON_MEDIA_TYPE:
        return parse_json(body, resolution, limits.max_instances, limits)
    if kind == CSV_MEDIA_TYPE:
        return parse_csv(body, resolution, limits.max_instances)
    raise RequestError(
        415,
        f"unsupported Content-Type {content_type!r}: send {JSON_MEDIA_TYPE} or {CSV_MEDIA_TYPE}",
        field="Content-Type",
    )


# ---------------------------------------------------------------------------------------------
# JSON


def parse_json(
    body: bytes, resolution: Resolution, max_instances: int, limits: RequestLimits | None = None
) -> Instances:
    """``{"instances": [...]}`` → ``Instances`` (``limits`` for the JSON bounds)."""
    _check_json_structure(body, limits or RequestLimits())
    document = _decode_json(body)
    if not isinstance(document, dict) or "instances" not in document:
        raise RequestError(
            400, f"the body must be a JSON object like {JSON_SHAPE}", field=BODY_FIELD
        )
    instances = document["instances"]
    if not isinstance(instances, list):
        raise RequestError(
            400, f"instances must be a list, got {type(instances).__name__}", field="instances"
        )
    explain = document.get(EXPLAIN_FIELD, False)
    if not isinstance(explain, bool):
        raise RequestError(
            400, f"explain must be true or false, got {_show(explain)}", field=EXPLAIN_FIELD
        )
    _check_count(len(instances), max_instances)
    if explain and len(instances) > MAX_EXPLAINED_INSTANCES:
        raise RequestError(
            400,
            f"explain: true takes at most {MAX_EXPLAINED_INSTANCES:,} instances, got "
            f"{len(instances):,}: split the batch (contributions cost far more than forecasts)",
            field=EXPLAIN_FIELD,
        )
    parsed = _resolve(_json_columns(instances), len(instances), resolution, _json_location)
    return dataclasses.replace(parsed, explain=explain) if explain else parsed


def _check_json_structure(body: bytes, limits: RequestLimits) -> None:
    """Refuse, before decoding, a body nested too deep or with too many arrays, objects or
    values (the garbage collector's passes over millions of fresh containers made decoding
    superlinear: 3.3 s for 4.8 MB of nested arrays; 2.5 million numbers held the GIL 0.4 s)."""
    brackets = body.count(b"[") + body.count(b"{")
    if brackets <= min(limits.max_depth, limits.max_containers) and (
        body.count(b",") + brackets < limits.max_values
    ):
        return  # not enough brackets or commas to break a bound, strings and all
    structure = _json_structure(body)
    if structure.depth > limits.max_depth:
        raise RequestError(
            400,
            f"JSON nested too deeply: more than {limits.max_depth} levels of arrays and objects",
            field=BODY_FIELD,
        )
    for count, limit, what in (
        (structure.containers, limits.max_containers, "arrays and objects"),
        (structure.values, limits.max_values, "values"),
    ):
        if count > limit:
            raise RequestError(
                413,
                f"{count} JSON {what} in one body; at most {limit} are accepted",
                field=BODY_FIELD,
            )


def _decode_json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"malformed JSON: {error}", field=BODY_FIELD) from None
    except RecursionError:
        raise RequestError(400, "malformed JSON: nested too deeply", field=BODY_FIELD) from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        pass
    try:  # again, reading such integers as the out-of-range numbers they are
        return json.loads(body, parse_int=_int_or_long)
    except ValueError as error:
        raise RequestError(400, f"malformed JSON: {error}", field=BODY_FIELD) from None


class _LongInteger(float):
    """An integer literal with more digits than Python converts: ±inf, shown by its length."""

    digits: int

    def __new__(cls, text: str) -> _LongInteger:
        value = super().__new__(cls, "-inf" if text.startswith("-") else "inf")
        value.digits = len(text.lstrip("-"))
        return value

    def __str__(self) -> str:
        return f"an integer of {self.digits} digits"

    __repr__ = __str__


def _int_or_long(text: str) -> int | float:
    limit = sys.get_int_max_str_digits()
    return _LongInteger(text) if limit and len(text.lstrip("-")) > limit else int(text)


# bytes.translate table: '[' '{' → 1, ']' '}' → 2, ',' → 3, '"' → 4, '\\' → 5, all else → 0
_JSON_SYNTAX = bytes(
    {"[": 1, "{": 1, "]": 2, "}": 2, ",": 3, '"': 4, "\\": 5}.get(chr(i), 0) for i in range(256)
)


class JsonStructure(NamedTuple):
    containers: int  # arrays and objects
    depth: int  # deepest nesting of arrays and objects
    values: int  # every value, containers included (an upper bound: ``[]`` counts 2)


def _json_structure(body: bytes) -> JsonStructure:
    """The ``JsonStructure`` of a JSON text: brackets and commas in strings aside.

    One C pass classifies the bytes, then only quotes, backslashes, brackets and commas are
    looked at, as numpy arrays: a fraction of what decoding the body costs, and before it.
    Exact for valid JSON; for invalid JSON the answer does not matter, the decoder refuses it.
    """
    classes = np.frombuffer(body.translate(_JSON_SYNTAX), dtype=np.uint8)
    positions = np.flatnonzero(classes != 0)
    kinds = classes[positions]
    quote = kinds == 4
    if b"\\" in body:  # a quote after an odd run of backslashes does not end a string
        quotes = np.flatnonzero(quote)
        at = positions[quotes]
        after_backslash = np.flatnonzero(classes[np.maximum(at - 1, 0)] == 5)
        if len(after_backslash):
            backslashes = positions[kinds == 5]
            run_starts = np.concatenate(([True], np.diff(backslashes) != 1))
            run_start = backslashes[run_starts][np.cumsum(run_starts) - 1]
            end = at[after_backslash] - 1  # the backslash just before the quote
            start = run_start[np.searchsorted(backslashes, end)]
            quote[quotes[after_backslash[(end - start) % 2 == 0]]] = False
    inside = np.bitwise_xor.accumulate(quote.view(np.uint8))  # 1 after an opening quote
    syntax = kinds[(inside == 0) & (kinds <= 3)]
    brackets = syntax[syntax <= 2]
    opens = brackets == 1
    containers = int(np.count_nonzero(opens))
    depth = int(np.cumsum(np.where(opens, 1, -1).astype(np.int32)).max()) if len(opens) else 0
    return JsonStructure(containers, depth, len(syntax) - len(brackets) + containers + 1)


_ARROW_TYPES = {
    CELL_FIELD: pa.string(),
    TIME_FIELD: pa.string(),
    LAT_FIELD: pa.float64(),
    LON_FIELD: pa.float64(),
}
# The Python types a decoded JSON value of each field may have (``bool`` is not ``int`` here).
_JSON_TYPES = {
    CELL_FIELD: {str, type(None)},
    TIME_FIELD: {str, type(None)},
    LAT_FIELD: {float, int, type(None)},
    LON_FIELD: {float, int, type(None)},
}


def _json_columns(instances: list) -> dict[str, pa.Array]:
    """Our four fields of every instance as Arrow columns; other fields are never looked at."""
    try:
        values = {name: [instance.get(name) for instance in instances] for name in _ARROW_TYPES}
    except AttributeError:  # an instance that is not an object
        raise _first_invalid_instance(instances) or _unreadable(None, None) from None
    columns = {}
    for name, kind in _ARROW_TYPES.items():
        if not set(map(type, values[name])) <= _JSON_TYPES[name]:
            raise _first_invalid_instance(instances) or _unreadable(name, None)
        try:
            columns[name] = pa.array(values[name], type=kind)
        except (pa.ArrowException, OverflowError, ValueError) as error:
            # integers beyond float64's exact range, strings that are not valid Unicode
            raise _first_invalid_instance(instances) or _unreadable(name, error) from None
    return columns


def _unreadable(name: str | None, error: BaseException | None) -> RequestError:
    what = f"instances' {name}" if name else "instances"
    return RequestError(
        400, f"could not read {what}" + (f": {error}" if error else ""), field=name or "instances"
    )


def _show(value) -> str:
    """A JSON value in an error message: as JSON, cut short when long."""
    if isinstance(value, _LongInteger):
        return str(value)
    text = json.dumps(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _first_invalid_instance(instances: list) -> RequestError | None:
    """Error path only: walk the instances to name the first one whose fields we cannot take."""
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            return RequestError(
                400,
                f"{_json_location(index, None)} must be a JSON object, got {_show(instance)}",
                field="instances",
                instance=index,
            )
        for name in STRING_FIELDS:
            value = instance.get(name)
            if value is not None and not isinstance(value, str):
                return RequestError(
                    400,
                    f"{_json_location(index, name)} must be a string, got {_show(value)}",
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
                    f"{_json_location(index, name)} must be a number, got {_show(value)}",
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


def parse_csv(body: bytes, resolution: Resolution, max_instances: int) -> Instances:
    """A CSV with a header (``h3_cell,timestamp`` or ``lat,lon,timestamp``) → ``Instances``.

    Header names are matched as ingestion matches them (case and surrounding blanks aside);
    lines may end in LF, CRLF or a bare CR.
    """
    body = body.removeprefix(UTF8_BOM)
    header = body[: _line_end(body)]
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(
            400, f"malformed CSV: the header is not UTF-8 ({error})", field=BODY_FIELD
        ) from None
    shown = text if len(text) <= 200 else f"{text[:200]}..."
    try:
        names = [header_name(name) for name in next(csv.reader([text]), [])]
    except csv.Error as error:
        raise RequestError(
            400, f"malformed CSV header {shown!r}: {error}", field=BODY_FIELD
        ) from None
    if not any(names):
        raise RequestError(
            400, f"empty CSV: expected a header line {CSV_HEADERS}", field=BODY_FIELD
        )
    missing = _missing_csv_column(set(names))
    if missing:
        raise RequestError(
            400,
            f"the CSV header must be {CSV_HEADERS}; {shown!r} lacks {missing[1]}",
            field=missing[0],
        )
    if len(set(names)) != len(names):
        raise RequestError(400, f"the CSV header repeats a column: {shown!r}", field=BODY_FIELD)
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
        raise RequestError(400, f"malformed CSV: {error}", field=BODY_FIELD) from None
    _check_count(table.num_rows, max_instances)
    columns = {name: table.column(name).combine_chunks() for name in present}
    for name in NUMBER_FIELDS:
        if name in columns:
            columns[name] = _csv_numbers(columns[name], name)
    return _resolve(columns, table.num_rows, resolution, _csv_location)


def _line_end(body: bytes) -> int:
    """Where the first line ends: at the first LF or CR, as Arrow's reader sees it."""
    ends = [position for position in (body.find(b"\n"), body.find(b"\r")) if position >= 0]
    return min(ends, default=len(body))


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


def _resolve(
    columns: dict[str, pa.Array], n: int, resolution: Resolution, where: Locator
) -> Instances:
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
    if isinstance(resolution, tuple):  # several: the router converts coordinates per city
        lat, lon = np.zeros(n), np.zeros(n)
        if has_lat.any():
            lat[has_lat], lon[has_lat] = _coordinates(columns, has_lat, where)
        return Instances(
            cells=cells,
            hour_ns=_floored_hours(columns[TIME_FIELD], where),
            coordinates=has_lat,
            lat=lat,
            lon=lon,
        )
    if has_lat.any():
        cells[has_lat] = cells_for(*_coordinates(columns, has_lat, where), resolution)
    return Instances(cells=cells, hour_ns=_floored_hours(columns[TIME_FIELD], where))


def _parse_cells(
    column: pa.Array, rows: np.ndarray, resolution: Resolution, where: Locator
) -> np.ndarray:
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
    allowed = resolution if isinstance(resolution, tuple) else (resolution,)
    served = (
        f"this model forecasts resolution {resolution} cells"
        if not isinstance(resolution, tuple)
        else f"this endpoint forecasts resolution {' or '.join(map(str, allowed))} cells"
    )
    other = np.zeros(len(rows), dtype=bool)
    other[positions] = ~np.isin(levels, allowed)
    _fail_at(
        other,
        400,
        CELL_FIELD,
        lambda i: (
            f"{text[np.searchsorted(positions, i)]!r} is a resolution "
            f"{levels[np.searchsorted(positions, i)]} cell; {served}"
        ),
        where,
    )
    return parsed


def _coordinates(
    columns: dict[str, pa.Array], rows: np.ndarray, where: Locator
) -> tuple[np.ndarray, np.ndarray]:
    """``(lat, lon)`` of ``rows``, refusing values outside the valid range."""
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
    return values[LAT_FIELD], values[LON_FIELD]


def _floored_hours(column: pa.Array, where: Locator) -> np.ndarray:
    """ISO-8601 strings → ns since epoch floored to the UTC hour; a time without a zone is UTC.

    Arrow parses a batch whose timestamps all carry a zone, or all lack one, in C++ (in
    nanoseconds, or in microseconds for times outside the nanosecond range); only a batch that
    mixes the two (or uses a form Arrow lacks) is parsed string by string, because pandas would
    silently apply one string's offset to the zoneless others. An hour whose start is not a
    64-bit nanosecond count is refused, never wrapped around.
    """
    for unit, per_hour in (("ns", HOUR_NS), ("us", HOUR_US)):
        for target in (pa.timestamp(unit, "UTC"), pa.timestamp(unit)):
            try:
                ticks = column.cast(target).cast(pa.int64()).to_numpy(zero_copy_only=False)
            except pa.ArrowException:
                continue
            return _hour_starts(ticks // per_hour, column, where)
    return _hour_starts(_hours_one_by_one(column.to_pylist(), where), column, where)


def _hour_starts(hours: np.ndarray, column: pa.Array, where: Locator) -> np.ndarray:
    _fail_at(
        (hours < MIN_HOUR) | (hours > MAX_HOUR),
        400,
        TIME_FIELD,
        lambda i: (
            f"{column[i].as_py()!r} is outside the range of 64-bit nanosecond timestamps "
            f"({TIME_RANGE})"
        ),
        where,
    )
    return hours * HOUR_NS


def _hours_one_by_one(texts: list[str], where: Locator) -> np.ndarray:
    """The slow path: Python's ISO-8601 parser per string, so each keeps its own zone."""
    hours = np.empty(len(texts), dtype="int64")
    one_hour = dt.timedelta(hours=1)
    for index, text in enumerate(texts):
        try:
            stamp = dt.datetime.fromisoformat(text)
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            hours[index] = (stamp - EPOCH) // one_hour
        except (ValueError, OverflowError):
            raise RequestError(
                400,
                f"{where(index, TIME_FIELD)}: {text!r} is not an ISO-8601 timestamp",
                field=TIME_FIELD,
                instance=index,
            ) from None
    return hours
