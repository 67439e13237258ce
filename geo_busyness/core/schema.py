"""Raw courier-ping data contract and its vectorized validator.

Raw files are read with every column as text so that a quarantined row keeps exactly what
arrived. Validation is column-wise (Arrow/numpy, with pandas' parsing semantics), never row by
row. Every input row ends in
exactly one of *clean* or *quarantine*; a file that cannot be read as the contract is
quarantined whole, one record per source row, each naming the file and the problem.

Landing files are read as real exports write them (see :func:`read_landing_file`): compressed
(gzip, zip, bzip2, xz: by magic bytes), in UTF-8 with or without a byte-order mark, UTF-16/32
with a byte-order mark (or UTF-16 without one, recognized by its NUL bytes), or a legacy 8-bit
encoding (non-UTF-8 bytes are decoded as cp1252, and the rows whose contract values hold such
bytes are counted), with a comma, semicolon, tab or pipe between fields (chosen from the header
line). An ordinary UTF-8 comma CSV takes the same fast Arrow path as before.
"""

from __future__ import annotations

import bz2
import codecs
import datetime
import gzip
import io
import lzma
import os
import re
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from geo_busyness.core.city import City
from geo_busyness.core.geo import haversine_km
from geo_busyness.core.landing import COMPRESSION_EXTENSIONS

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
ID_COLUMNS = ("courier_id", "order_number")
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
    OUTSIDE_SERVICE_AREA = "outside_service_area"
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


# --- Landing files: compression, encoding, delimiter ------------------------------------------

# Magic bytes decide the compression (a name's ".gz" only says what to expect). A zip archive
# must hold exactly one file. Nested compression (a .gz inside a .zip) is unpacked too.
MAX_DECOMPRESSED_BYTES = 4 * 2**30
_MAX_COMPRESSION_LAYERS = 3
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
FALLBACK_ENCODING = "cp1252"  # bytes cp1252 leaves undefined (0x81 0x8D 0x8F 0x90 0x9D): Latin-1
FALLBACK_ROWS_LISTED = 20  # source rows named in the metadata of a file read with the fallback
_STREAM_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


@dataclass(frozen=True)
class FileFormat:
    """How a landing file was read, as the run's metadata reports it per file.

    ``encoding`` is ``utf-8``, ``utf-8-sig`` (with a byte-order mark), ``utf-16-le``/``-be``,
    ``utf-32-le``/``-be`` or ``utf-8+cp1252`` (bytes that are not UTF-8 decoded as cp1252);
    ``fallback_rows`` counts the data rows whose contract values hold such bytes (kept, not
    quarantined: the bytes are read as the legacy encoding most exports use) and
    ``fallback_source_rows`` names the first :data:`FALLBACK_ROWS_LISTED` of them.
    """

    kind: str = "csv"  # "csv" or "parquet"
    compression: str | None = None  # e.g. "gzip", "zip", "zip+gzip"
    encoding: str | None = None  # None for Parquet (and for bytes that were never decoded)
    delimiter: str | None = None
    fallback_rows: int = 0
    fallback_source_rows: tuple[int, ...] = ()

    def as_metadata(self) -> dict[str, object]:
        return {
            "format": self.kind,
            "compression": self.compression,
            "encoding": self.encoding,
            "delimiter": DELIMITER_NAMES.get(self.delimiter, self.delimiter),
            "fallback_decoded_rows": self.fallback_rows,
            "fallback_decoded_source_rows": list(self.fallback_source_rows),
        }


@dataclass(frozen=True)
class LandingRead:
    """One landing file as the ingestion takes it: its raw records (a file that cannot be read
    as the contract gives one record per source row carrying ``error``) and how it was read."""

    frame: pd.DataFrame
    format: FileFormat
    error: str | None = None


@dataclass(frozen=True)
class _Decoded:
    """A file after decompression and, for text, transcoding to UTF-8 (not yet validated)."""

    data: bytes
    format: FileFormat


def read_landing_file(name: str, content: bytes) -> LandingRead:
    """Read one landing file, never raising: :func:`read_raw_file` when it can be read, else
    :func:`unparseable_file_rows` with the error."""
    try:
        frame, file_format = _read(name, content)
    except UnparseableFileError as error:
        frame, file_format = _unparseable(name, content, str(error))
        return LandingRead(frame=frame, format=file_format, error=str(error))
    return LandingRead(frame=_with_lineage(frame, name), format=file_format)


def header_name(name: object) -> str:
    """A column name as the contract compares it: case and surrounding blanks do not matter
    (``' Courier_ID '`` is ``courier_id``). The model server reads CSV headers by the same rule."""
    return str(name).strip().lower()


def read_raw_file(name: str, content: bytes) -> pd.DataFrame:
    """Parse one landing file (CSV or Parquet) into text columns plus lineage.

    Raises :class:`UnparseableFileError` naming the file and the problem when the content
    is not a table with the contract's columns. Header names are matched case- and
    blank-insensitively; extra columns are dropped.

    A CSV file is read with Arrow's multi-threaded reader; anything it does not read exactly
    as pandas' C parser would (an odd row, a NUL byte, a duplicate or blank header name, a
    missing column) is read again by pandas, so results and error messages stay pandas'.
    Compression, encoding and delimiter are recognized first (see the module's docstring).
    """
    frame, _ = _read(name, content)
    return _with_lineage(frame, name)


def _with_lineage(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    frame["source_file"] = pd.array([name] * len(frame), dtype="string")
    frame["source_row"] = np.arange(len(frame), dtype="int64")
    frame["file_error"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    return frame


def _read(name: str, content: bytes) -> tuple[pd.DataFrame, FileFormat]:
    """The contract columns of a file as text (no lineage yet) and how it was read."""
    if _blank(content):
        return _empty_text_frame(), FileFormat(kind=_kind_of_name(name))
    decoded = _decode(name, content)
    data, file_format = decoded.data, decoded.format
    if _blank(data):
        return _empty_text_frame(), file_format
    if file_format.kind == "parquet":
        return _pandas_frame(name, data, file_format), file_format
    file_format = replace(file_format, delimiter=_sniff_delimiter(data))
    frame = _read_csv_with_arrow(data, file_format.delimiter)
    if frame is not None:
        return frame, file_format
    if file_format.encoding == "utf-8" and not _is_utf8(data):
        return _read_with_fallback(name, data, file_format)
    return _pandas_frame(name, data, file_format), file_format


def _pandas_frame(name: str, data: bytes, file_format: FileFormat) -> pd.DataFrame:
    table = _checked_columns(name, _pandas_table(name, data, file_format))
    return table.loc[:, list(RAW_COLUMNS)].astype("string").reset_index(drop=True)


def _csv_frame(name: str, data: bytes, file_format: FileFormat) -> pd.DataFrame:
    """UTF-8 CSV text through Arrow, or pandas where Arrow would not read it as pandas does."""
    frame = _read_csv_with_arrow(data, file_format.delimiter)
    return _pandas_frame(name, data, file_format) if frame is None else frame


def _read_with_fallback(
    name: str, data: bytes, file_format: FileFormat
) -> tuple[pd.DataFrame, FileFormat]:
    """Text that is not all UTF-8: each run of bytes that is not UTF-8 is decoded as cp1252.

    The same text with those bytes as U+FFFD is read beside it (both have the same rows, the
    replaced bytes are never delimiters, quotes or line ends); the rows whose contract values
    differ between the two are the rows decoded by the fallback."""
    fallback, marked = _fallback_decode(data)
    file_format = replace(file_format, encoding=f"utf-8+{FALLBACK_ENCODING}")
    frame = _csv_frame(name, fallback, file_format)
    reference = _csv_frame(name, marked, file_format)
    changed = np.zeros(len(frame), dtype=bool)
    if len(reference) == len(frame):
        for column in RAW_COLUMNS:
            changed |= frame[column].to_numpy(dtype=object) != reference[column].to_numpy(
                dtype=object
            )
    else:  # never expected: count every row as decoded by the fallback
        changed[:] = True
    rows = np.flatnonzero(changed)
    return frame, replace(
        file_format,
        fallback_rows=len(rows),
        fallback_source_rows=tuple(int(r) for r in rows[:FALLBACK_ROWS_LISTED]),
    )


def _kind_of_name(name: str) -> str:
    stem = name.lower()
    for extension in COMPRESSION_EXTENSIONS:
        stem = stem.removesuffix(extension)
    return "parquet" if stem.endswith(".parquet") else "csv"


def _decode(name: str, content: bytes) -> _Decoded:
    """Decompress by magic bytes, tell Parquet from text, and transcode text to UTF-8 by its
    byte-order mark (UTF-8 without one is returned as it is, unvalidated)."""
    data, inner_name, layers = content, name, []
    for _ in range(_MAX_COMPRESSION_LAYERS):
        unpacked = _decompress(name, inner_name, data)
        if unpacked is None:
            break
        compression, data, inner_name = unpacked
        layers.append(compression)
    compression = "+".join(layers) or None
    if _kind_of_name(inner_name) == "parquet" or data.startswith(b"PAR1"):
        return _Decoded(data, FileFormat(kind="parquet", compression=compression))
    data, encoding = _transcode(name, data)
    return _Decoded(data, FileFormat(kind="csv", compression=compression, encoding=encoding))


def _decompress(name: str, inner_name: str, data: bytes) -> tuple[str, bytes, str] | None:
    """(compression, content, name of the content) when ``data`` is compressed, else None."""
    if data.startswith(b"\x1f\x8b"):
        kind = "gzip"
    elif data.startswith(b"BZh") and data[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        kind = "bzip2"
    elif data.startswith(b"\xfd7zXZ\x00"):
        kind = "xz"
    elif data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _unzip(name, data)
    else:
        return None
    try:
        with _STREAM_OPENERS[kind](io.BytesIO(data)) as stream:
            unpacked = stream.read(MAX_DECOMPRESSED_BYTES + 1)
    except Exception as error:
        raise UnparseableFileError(
            f"{name}: cannot be decompressed as {kind} ({type(error).__name__}: {error})"
        ) from error
    _check_size(name, kind, unpacked)
    stem = inner_name
    for extension in COMPRESSION_EXTENSIONS:
        if stem.lower().endswith(extension):
            stem = stem[: -len(extension)]
            break
    return kind, unpacked, stem


def _unzip(name: str, data: bytes) -> tuple[str, bytes, str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [
                info
                for info in archive.infolist()
                if not info.is_dir()
                and not info.filename.startswith("__MACOSX/")
                and not PurePosixPath(info.filename).name.startswith(".")
            ]
            if len(members) != 1:
                raise UnparseableFileError(
                    f"{name}: a zip archive must hold exactly one file, this one holds "
                    f"{len(members)}: {[m.filename for m in members][:10]}"
                )
            with archive.open(members[0]) as stream:
                unpacked = stream.read(MAX_DECOMPRESSED_BYTES + 1)
    except UnparseableFileError:
        raise
    except Exception as error:
        raise UnparseableFileError(
            f"{name}: cannot be decompressed as zip ({type(error).__name__}: {error})"
        ) from error
    _check_size(name, "zip", unpacked)
    return "zip", unpacked, members[0].filename


def _check_size(name: str, kind: str, unpacked: bytes) -> None:
    if len(unpacked) > MAX_DECOMPRESSED_BYTES:
        raise UnparseableFileError(
            f"{name}: decompresses ({kind}) to more than {MAX_DECOMPRESSED_BYTES:,} bytes"
        )


def _transcode(name: str, data: bytes) -> tuple[bytes, str]:
    """UTF-8 bytes of text and the encoding they were written in (by byte-order mark, or
    UTF-16 recognized by its NUL bytes); other text is taken as UTF-8 as it is."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            if encoding == "utf-8-sig":
                return data[len(bom) :], encoding
            return _to_utf8(name, data[len(bom) :], encoding), encoding
    encoding = _utf16_without_bom(data)
    if encoding is not None:
        return _to_utf8(name, data, encoding), encoding
    return data, "utf-8"


def _to_utf8(name: str, data: bytes, encoding: str) -> bytes:
    try:
        return data.decode(encoding).encode("utf-8")
    except UnicodeError as error:
        raise UnparseableFileError(f"{name}: not valid {encoding} text ({error})") from error


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 of mostly ASCII text has a NUL byte in every other position: after each character
    (little-endian) or before it (big-endian), the first (the header's first letter) included,
    and hardly any in the other positions. The head of the file decides."""
    head = data[: 4096 - 4096 % 2] if len(data) >= 4096 else data[: len(data) - len(data) % 2]
    if len(head) < 4 or b"\x00" not in head:
        return None
    even, odd = head[0::2], head[1::2]
    even_nuls, odd_nuls = even.count(0), odd.count(0)
    if head[1] == 0 and odd_nuls * 4 >= len(odd) and even_nuls * 8 <= odd_nuls:
        return "utf-16-le"
    if head[0] == 0 and even_nuls * 4 >= len(even) and odd_nuls * 8 <= even_nuls:
        return "utf-16-be"
    return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fallback_table() -> str:
    chars = []
    for byte in range(256):
        try:
            chars.append(bytes([byte]).decode(FALLBACK_ENCODING))
        except UnicodeDecodeError:
            chars.append(chr(byte))  # undefined in cp1252: as Latin-1 does
    return "".join(chars)


_FALLBACK_TABLE = _fallback_table()
_NON_ASCII_RUN = re.compile(rb"[\x80-\xff]+")
_FALLBACK_ERRORS = "geo_busyness.cp1252_fallback"


def _cp1252_fallback(error: UnicodeError) -> tuple[str, int]:
    """Decode handler: the run of non-ASCII bytes where UTF-8 failed, as cp1252 (in C)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    run = _NON_ASCII_RUN.match(error.object, error.start)
    end = max(run.end() if run else error.end, error.end)
    return codecs.charmap_decode(error.object[error.start : end], "strict", _FALLBACK_TABLE)[0], end


codecs.register_error(_FALLBACK_ERRORS, _cp1252_fallback)


def _fallback_decode(data: bytes) -> tuple[bytes, bytes]:
    """UTF-8 text of ``data`` read with the cp1252 fallback, and with U+FFFD instead."""
    fallback = data.decode("utf-8", errors=_FALLBACK_ERRORS).encode("utf-8")
    marked = data.decode("utf-8", errors="replace").encode("utf-8")
    return fallback, marked


_HEADER_SNIFF_BYTES = 1 << 16


def _sniff_delimiter(data: bytes) -> str:
    """The delimiter of the header line: the one that splits it into the most contract column
    names, then the most frequent one; a comma when none occurs."""
    end = data.find(b"\n", 0, _HEADER_SNIFF_BYTES)
    header = data[: end if end >= 0 else _HEADER_SNIFF_BYTES].decode("utf-8", errors="replace")

    def score(delimiter: str) -> tuple[int, int]:
        names = {part.strip().strip('"').strip().lower() for part in header.split(delimiter)}
        return sum(column in names for column in RAW_COLUMNS), header.count(delimiter)

    return max(DELIMITERS, key=score)  # the first of equals: a comma before the others


def _blank(content: bytes) -> bool:
    """``not content.strip()``, without copying a large file."""
    return not content[:1].strip() and not content.strip()


def _read_with_pandas(name: str, content: bytes) -> pd.DataFrame:
    """The reference reader: pandas, every column as text, headers normalized and checked
    (after decompression, decoding and delimiter sniffing, as :func:`read_raw_file`)."""
    decoded = _decode(name, content)
    data, file_format = decoded.data, decoded.format
    if file_format.kind == "csv":
        if file_format.encoding == "utf-8" and not _is_utf8(data):
            data = _fallback_decode(data)[0]
        file_format = replace(file_format, delimiter=_sniff_delimiter(data))
    return _checked_columns(name, _pandas_table(name, data, file_format))


def _checked_columns(name: str, table: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in RAW_COLUMNS if column not in table.columns]
    if missing:
        raise UnparseableFileError(
            f"{name}: missing required columns {missing}; found columns {list(table.columns)}"
        )
    return table


def _pandas_table(name: str, data: bytes, file_format: FileFormat) -> pd.DataFrame:
    """Any table pandas reads from decoded content, every column as text, header names
    normalized."""
    try:
        if file_format.kind == "parquet":
            table = pd.read_parquet(io.BytesIO(data))
            table = table.astype("string")
        else:
            table = pd.read_csv(
                io.BytesIO(data),
                sep=file_format.delimiter or ",",
                dtype="string",
                keep_default_na=False,
                na_filter=False,
                skipinitialspace=False,
            )
    except Exception as error:
        raise UnparseableFileError(
            f"{name}: cannot be parsed ({type(error).__name__}: {error})"
        ) from error
    table.columns = [header_name(column) for column in table.columns]
    return table


def _read_csv_with_arrow(content: bytes, delimiter: str = ",") -> pd.DataFrame | None:
    """The contract's columns of a CSV file as text, or None when pandas must decide.

    The header is read as an ordinary row (so every column, whatever its name, is text) and
    the file is only accepted when its header names each contract column exactly once. Arrow refuses the row shapes pandas would repair; a
    sentinel row appended to the file shows that the file does not end inside a quote.
    """
    if b"\x00" in content:  # pandas' tokenizer treats NUL specially
        return None
    if b"\r" in content and content.count(b"\r") != content.count(b"\r\n"):
        return None  # pandas' tokenizer has quirks with bare carriage returns
    header_end = content.find(b"\n")
    separator = delimiter.encode()
    fields = content[: header_end if header_end >= 0 else None].count(separator) + 1
    sentinel = "\x01"
    try:
        table = pa_csv.read_csv(
            io.BytesIO(
                b"".join([content, b"\n", separator.join([sentinel.encode()] * fields), b"\n"])
            ),
            read_options=pa_csv.ReadOptions(autogenerate_column_names=True),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(fields)},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows < 2 or table.num_columns != fields:
        return None
    if not all(pa.types.is_string(f.type) for f in table.schema):
        return None
    if any(column[-1].as_py() != sentinel for column in table.columns):
        return None  # the file ends inside a quoted value
    header = [column[0].as_py() for column in table.columns]
    normalized = [header_name(column) for column in header]
    if any(normalized.count(column) != 1 for column in RAW_COLUMNS):
        return None
    body = table.slice(1, table.num_rows - 2)
    return pd.DataFrame(
        {column: _pandas_text(body.column(normalized.index(column))) for column in RAW_COLUMNS}
    )


def _pandas_text(column: pa.ChunkedArray) -> pd.api.extensions.ExtensionArray:
    """Arrow text as a pandas "string" array. A repetitive column (courier ids, restaurant
    coordinates) builds each distinct Python string once and shares it."""
    sample = column.slice(0, 1000)
    if len(column) >= 4000 and pc.count_distinct(sample).as_py() <= len(sample) // 4:
        encoded = pc.dictionary_encode(column).combine_chunks()
        strings = encoded.dictionary.to_numpy(zero_copy_only=False)
        return pd.array(strings[encoded.indices.to_numpy()], dtype="string")
    return pd.StringDtype().__from_arrow__(column)


def unparseable_file_rows(name: str, content: bytes, error: str) -> pd.DataFrame:
    """Raw records standing for a whole file that cannot be read as the contract, one per source
    row, each carrying ``error`` in ``file_error``, so that every row of the file is quarantined
    (``unparseable_file``) and counted.

    A file that is still a table (a wrong or missing header column, say) gives one record per
    table row, keeping the contract columns it has (header names normalized as by
    :func:`read_raw_file`, missing columns NA) and ``source_row`` as a readable file would. Text
    that is no table at all gives one record per non-blank line after the header line, without
    values. Bytes that are not text give at least one record (exactly one when they hold NUL
    bytes, whose lines mean nothing). A blank file gives none. Compressed and non-UTF-8 files
    are counted after decompression and decoding, as :func:`read_raw_file` reads them (with the
    cp1252 fallback any byte is text); an archive that cannot be unpacked, or text that is not
    valid in the encoding its byte-order mark names, is counted as the bytes it is.
    """
    return _unparseable(name, content, error)[0]


def _unparseable(name: str, content: bytes, error: str) -> tuple[pd.DataFrame, FileFormat]:
    if _blank(content):
        return _empty_raw_frame(), FileFormat(kind=_kind_of_name(name))
    try:
        decoded = _decode(name, content)
    except UnparseableFileError:  # no readable archive or text encoding: the bytes as they are
        data, file_format = content, FileFormat(kind=_kind_of_name(name))
        text = _is_text(content)
    else:
        data, file_format = decoded.data, decoded.format
        if file_format.kind == "csv":
            if file_format.encoding == "utf-8" and not _is_utf8(data):
                data = _fallback_decode(data)[0]
                file_format = replace(file_format, encoding=f"utf-8+{FALLBACK_ENCODING}")
            file_format = replace(file_format, delimiter=_sniff_delimiter(data))
        text = file_format.kind == "csv" and b"\x00" not in data
    parquet = file_format.kind == "parquet"
    if _blank(data):
        frame = _empty_raw_frame()
    else:
        try:
            table = _pandas_table(name, data, file_format)
        except UnparseableFileError:
            rows = 1 if b"\x00" in data else _data_lines(data)
            frame = _empty_raw_frame(rows if text else max(rows, 1))
        else:
            frame = _empty_raw_frame(len(table) if text or parquet else max(len(table), 1))
            names = list(table.columns)
            for column in RAW_COLUMNS:
                if column in names and len(table):  # the first column of that name, as text
                    frame[column] = table.iloc[:, names.index(column)].astype("string").array
    frame["source_file"] = _repeated_text(name, len(frame))
    frame["file_error"] = _repeated_text(error, len(frame))
    return frame, file_format


def _is_text(content: bytes) -> bool:
    """UTF-8 without NUL bytes."""
    if b"\x00" in content:
        return False
    return _is_utf8(content)


_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)  # what bytes.strip() strips


def _data_lines(content: bytes) -> int:
    """Non-blank lines after the first non-blank (header) line."""
    data = np.frombuffer(content, dtype=np.uint8)
    if not len(data):
        return 0
    starts = np.concatenate(([0], np.flatnonzero(data == ord("\n")) + 1))
    starts = starts[starts < len(data)]  # every line [start, next start) is non-empty
    inked = np.logical_or.reduceat(~np.isin(data, _WHITESPACE), starts)
    return max(int(np.count_nonzero(inked)) - 1, 0)


def _repeated_text(value: str, rows: int) -> pd.api.extensions.ExtensionArray:
    return pd.array(np.full(rows, value, dtype=object), dtype="string")


def _empty_text_frame() -> pd.DataFrame:
    return pd.DataFrame({column: pd.array([], dtype="string") for column in RAW_COLUMNS})


def _empty_raw_frame(rows: int = 0) -> pd.DataFrame:
    """``rows`` raw records without values (all NA), ``source_row`` 0..rows-1."""
    frame = pd.DataFrame(
        {
            column: pd.array(np.full(rows, pd.NA, dtype=object), dtype="string")
            for column in (*RAW_COLUMNS, "source_file", "file_error")
        }
    )
    frame["source_row"] = np.arange(rows, dtype="int64")
    return frame.loc[:, [*RAW_COLUMNS, *SOURCE_COLUMNS]]


class _FirstFailure:
    """The first rule each row fails (0: none yet); later rules never overwrite it."""

    def __init__(self, n: int) -> None:
        self.rule = np.zeros(n, dtype=np.int16)
        self.reasons: list[str] = [""]
        self.details: list[str] = [""]
        self.row_details: list[tuple[np.ndarray, np.ndarray]] = []

    def flag(
        self,
        mask: np.ndarray,
        why: QuarantineReason,
        detail: str | Callable[[np.ndarray], np.ndarray],
    ) -> None:
        new = np.flatnonzero(mask & (self.rule == 0))
        self.reasons.append(why.value)
        self.details.append(detail if isinstance(detail, str) else "")
        self.rule[new] = len(self.reasons) - 1
        if not isinstance(detail, str) and len(new):
            self.row_details.append((new, np.asarray(detail(new), dtype=object)))

    def pending(self) -> np.ndarray:
        return self.rule == 0

    def labels(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reason and detail of the given (sorted, failed) rows."""
        rule = self.rule[rows]
        reason = np.array(self.reasons, dtype=object)[rule]
        detail = np.array(self.details, dtype=object)[rule]
        for flagged, texts in self.row_details:
            detail[np.searchsorted(rows, flagged)] = texts
        return reason, detail


def validate_pings(
    raw: pd.DataFrame, city: City, partition_day: str | None = None
) -> ValidationResult:
    """Split raw text rows into typed clean rows and quarantined rows with a reason.

    ``partition_day`` (YYYY-MM-DD, UTC) quarantines pings stamped on another day, so a day
    partition only ever holds its own hours.

    Text work runs on Arrow arrays but keeps pandas' semantics (``str.strip``, ``str.lower``,
    ``to_datetime(format="ISO8601")``, ``to_numeric``): the common shapes are decoded by exact
    vectorized fast paths and every other value goes to pandas itself.
    """
    n = len(raw)
    if not raw.index.equals(pd.RangeIndex(n)):
        raw = raw.reset_index(drop=True)
    failed = _FirstFailure(n)
    flag = failed.flag

    file_error = raw["file_error"]
    flag(
        file_error.notna().to_numpy(dtype=bool),
        QuarantineReason.UNPARSEABLE_FILE,
        lambda rows: file_error.to_numpy(dtype=object, na_value="")[rows],
    )

    # Columns are independent and Arrow/numpy release the GIL: parse them on all cores.
    with ThreadPoolExecutor(max_workers=min(len(RAW_COLUMNS), os.cpu_count() or 1)) as pool:
        columns = [raw[column] for column in RAW_COLUMNS]
        parsed = dict(zip(RAW_COLUMNS, pool.map(_parse_column, columns, RAW_COLUMNS), strict=True))
    parsed_ns = {column: parsed[column].values for column in TIMESTAMP_COLUMNS}
    numbers = {column: parsed[column].values for column in COORDINATE_COLUMNS}

    for column in RAW_COLUMNS:
        flag(parsed[column].missing, QuarantineReason.MISSING_VALUE, f"{column} is empty")
    for column in TIMESTAMP_COLUMNS:
        details = np.array(
            [
                f"{column} is not ISO-8601 or an epoch time",
                f"{column} is not ISO-8601 or an epoch time",
                f"{column} is outside the 64-bit nanosecond range "
                f"({FIRST_TIMESTAMP} to {LAST_TIMESTAMP})",
                f"{column} is all digits but not an epoch time (10 digits: seconds, "
                "13: milliseconds, 16: microseconds, 19: nanoseconds)",
            ],
            dtype=object,
        )
        flag(
            parsed_ns[column] == NAT_NS,
            QuarantineReason.UNPARSEABLE_TIMESTAMP,
            lambda rows, problem=parsed[column].problem, details=details: details[problem[rows]],
        )
    for column in COORDINATE_COLUMNS:
        flag(
            ~np.isfinite(numbers[column]),
            QuarantineReason.UNPARSEABLE_NUMBER,
            f"{column} is not a number",
        )

    for column in LAT_COLUMNS:
        flag(
            np.abs(numbers[column]) > 90, QuarantineReason.OUT_OF_RANGE, f"{column} outside -90..90"
        )
    for column in LON_COLUMNS:
        flag(
            np.abs(numbers[column]) > 180,
            QuarantineReason.OUT_OF_RANGE,
            f"{column} outside -180..180",
        )

    for lat, lon in (("courier_lat", "courier_lon"), ("restaurant_lat", "restaurant_lon")):
        zero = (numbers[lat] == 0) & (numbers[lon] == 0)
        flag(zero, QuarantineReason.NULL_ISLAND, f"({lat}, {lon}) is (0, 0)")
        km = haversine_km(numbers[lat], numbers[lon], city.center_lat, city.center_lon)
        far = km > city.implausible_distance_km
        prefix, suffix = f"{lat.split('_')[0]} is ", f" km from {city.name}"
        flag(
            far,
            QuarantineReason.IMPLAUSIBLE_LOCATION,
            lambda rows, km=km, prefix=prefix, suffix=suffix: np.char.add(
                prefix, np.char.add(np.round(km[rows], 1).astype(str), suffix)
            ),
        )

    ping_time = _utc_series(parsed_ns["courier_location_timestamp"])
    order_time = _utc_series(parsed_ns["order_created_timestamp"])
    late_order = (
        (order_time - ping_time > ORDER_AFTER_PING_TOLERANCE).fillna(False).to_numpy(dtype=bool)
    )
    flag(
        late_order,
        QuarantineReason.ORDER_AFTER_PING,
        "order created after the ping beyond tolerance",
    )

    if partition_day is not None:
        flag(
            _outside_day(parsed_ns["courier_location_timestamp"], partition_day),
            QuarantineReason.OUTSIDE_PARTITION_DAY,
            f"ping not on {partition_day} (UTC)",
        )

    # Duplicates are judged on parsed values, among rows that are otherwise valid, so that a
    # re-delivered file or a repeated row keeps its first copy only. Only rows sharing their
    # ping time and place with another candidate can be duplicates; just those are compared.
    source_row = raw["source_row"].astype("int64")
    candidates = np.flatnonzero(failed.pending())
    duplicated = np.zeros(n, dtype=bool)
    if len(candidates):
        ping = parsed_ns["courier_location_timestamp"][candidates]
        place = (numbers["courier_lat"][candidates] + 0.0).view(np.int64)  # + 0.0: -0.0 == 0.0
        shared = pd.Series(ping ^ place).duplicated(keep=False).to_numpy()
        suspects = candidates[shared]
        key = pd.DataFrame(
            {
                column: parsed[column].strings(suspects)
                if column in ID_COLUMNS
                else (parsed_ns[column] if column in TIMESTAMP_COLUMNS else numbers[column])[
                    suspects
                ]
                for column in RAW_COLUMNS
            }
        )
        duplicated[suspects] = key.duplicated(keep="first").to_numpy()
    flag(duplicated, QuarantineReason.DUPLICATE, "identical to an earlier ping")

    clean_rows = np.flatnonzero(failed.pending())
    clean = pd.DataFrame(
        {
            "courier_id": parsed["courier_id"].strings(clean_rows),
            "order_number": parsed["order_number"].strings(clean_rows),
            "courier_location_timestamp": _utc_series(
                parsed_ns["courier_location_timestamp"][clean_rows]
            ),
            "courier_lat": numbers["courier_lat"][clean_rows],
            "courier_lon": numbers["courier_lon"][clean_rows],
            "order_created_timestamp": _utc_series(
                parsed_ns["order_created_timestamp"][clean_rows]
            ),
            "restaurant_lat": numbers["restaurant_lat"][clean_rows],
            "restaurant_lon": numbers["restaurant_lon"][clean_rows],
            "source_file": raw["source_file"].array.take(clean_rows),
            "source_row": source_row.to_numpy()[clean_rows],
        }
    )
    clean = clean.astype(CLEAN_DTYPES, copy=False)
    failed_rows = np.flatnonzero(~failed.pending())
    quarantined = raw.iloc[failed_rows][[*RAW_COLUMNS, *SOURCE_COLUMNS]].reset_index(drop=True)
    reason, detail = failed.labels(failed_rows)
    quarantined["reason"] = pd.array(reason, dtype="string")
    quarantined["detail"] = pd.array(detail, dtype="string")
    return ValidationResult(clean=clean, quarantined=quarantined)


# --- Arrow text kernels with pandas semantics -------------------------------------------------

# Exactly the characters Python's str.isspace() accepts, i.e. what pandas' .str.strip() removes
# (a unit test recomputes the set), so Arrow's trim gives the same text.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
NAT_NS = np.iinfo(np.int64).min
NS_PER_DAY = 86_400 * 10**9
INT64_MAX = int(np.iinfo(np.int64).max)
# The nanosecond timestamps that exist (NAT_NS itself means "no time").
FIRST_TIMESTAMP, LAST_TIMESTAMP = "1677-09-21T00:12:43.145224193Z", "2262-04-11T23:47:16.854775807Z"
# Timestamp shapes parsed by Arrow: date (years 1700-2259, so that any offset stays well inside
# the nanosecond range), 'T' or blank, time, up to 9 fraction digits and a UTC offset (Z,
# +HH:MM, +HHMM, +HH) or none (naive means UTC). Every value is parsed on its own terms.
_ISO_FAST = (
    r"^(1[7-9][0-9]{2}|2[01][0-9]{2}|22[0-5][0-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?$"
)
# Unix epoch times (UTC), told apart by their number of digits: 10 = seconds (optionally with
# a fraction of up to 9 digits), 13 = milliseconds, 16 = microseconds, 19 = nanoseconds. Those
# lengths cover 2001-09-09 to 2286-11-20, so no other reading of such a value is plausible.
_EPOCH = r"^([0-9]{10}(\.[0-9]{1,9})?|[0-9]{13}|[0-9]{16}|[0-9]{19})$"
_EPOCH_UNIT_NS = {10: 10**9, 13: 10**6, 16: 10**3, 19: 1}
# Any other value is parsed by pandas (``format="ISO8601"``), one value at a time in effect:
# pandas carries the offset of one value over to the naive values parsed after it, so each
# value is parsed right after a UTC probe value. Its 4-digit year is first moved into
# 1800-2199 by whole 400-year cycles (146,097 days each: the Gregorian calendar repeats), so
# that pandas never meets the ends of the nanosecond range; the cycles are added back exactly.
_UTC_PROBE, _UTC_PROBE_NS = "2000-01-01T00:00:00Z", 946_684_800 * 10**9
_CYCLE_YEARS, _CYCLE_NS, _CYCLE_BASE_YEAR = 400, 146_097 * NS_PER_DAY, 1800
# Why a timestamp did not parse (quarantine detail)
_TS_FINE, _TS_NOT_ISO, _TS_OUT_OF_RANGE, _TS_DIGITS = range(4)
# Plain decimals of at most 15 characters: at most 15 digits, so both Arrow and pandas (one
# exact integer divided by an exact power of ten) give the correctly rounded double.
_DECIMAL_FAST = r"^[+-]?[0-9]+(\.[0-9]+)?$"
_DECIMAL_FAST_MAX_CHARS = 15
_DECIMAL_COMMA = r"^[+-]?[0-9]+,[0-9]+$"


def _case_variants(word: str) -> list[str]:
    variants = [""]
    for char in word:
        variants = [v + c for v in variants for c in dict.fromkeys((char.lower(), char.upper()))]
    return variants


_MISSING_VARIANTS = pa.array(sorted({v for token in MISSING_TOKENS for v in _case_variants(token)}))


@dataclass(frozen=True)
class _ParsedColumn:
    missing: np.ndarray  # the MISSING_VALUE rule
    values: np.ndarray | None = None  # int64 ns (timestamps) or float64 (coordinates)
    problem: np.ndarray | None = None  # timestamps: why a value did not parse (_TS_*)
    text: pa.Array | None = None  # identifier columns: the stripped text,
    raw_objects: np.ndarray | None = None  # the raw Python strings (if so stored)
    stripped: np.ndarray | None = None  # and where stripping changed them

    def strings(self, rows: np.ndarray) -> pd.api.extensions.ExtensionArray:
        """The stripped text of ``rows`` as a pandas "string" array, reusing the raw Python
        strings where stripping changed nothing."""
        if self.raw_objects is None:
            return _strings(self.text.take(rows))
        values = self.raw_objects[rows]
        changed = np.flatnonzero(self.stripped[rows])
        values[changed] = self.text.take(rows[changed]).to_numpy(zero_copy_only=False)
        return pd.array(values, dtype="string")


def _parse_column(values: pd.Series, column: str) -> _ParsedColumn:
    """Strip one raw column, flag its missing values and parse it as its contract type."""
    dtype, raw_objects = values.dtype, None
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "python":
        raw_objects = np.asarray(values.array)
        raw_text = _arrow_text(raw_objects)
    elif (
        isinstance(dtype, pd.StringDtype)
        or (isinstance(dtype, pd.ArrowDtype) and pa.types.is_unicode(dtype.pyarrow_dtype))
        or (isinstance(dtype, pd.ArrowDtype) and pa.types.is_large_unicode(dtype.pyarrow_dtype))
    ):
        raw_text = _arrow_text(values.array.__arrow_array__())
    else:  # object (or other) columns: pandas' own strip, which turns non-text into NA
        raw_text = _arrow_text(values.str.strip().to_numpy(dtype=object, na_value=None))
    # pandas' .str.strip() removes what str.isspace() accepts, whatever the storage
    text = pc.utf8_trim(raw_text, characters=PYTHON_WHITESPACE)
    missing = _is_missing(text)
    if column in TIMESTAMP_COLUMNS:
        values, problem = _parse_timestamps_ns(text)
        return _ParsedColumn(missing, values=values, problem=problem)
    if column in COORDINATE_COLUMNS:
        return _ParsedColumn(missing, values=_parse_numbers(text))
    stripped = None
    if raw_objects is not None:
        stripped = pc.not_equal(pc.binary_length(raw_text), pc.binary_length(text))
        stripped = stripped.fill_null(False).to_numpy(zero_copy_only=False)
    return _ParsedColumn(missing, text=text, raw_objects=raw_objects, stripped=stripped)


def _arrow_text(values) -> pa.Array:
    """One contiguous Arrow string or large_string array from text values or Arrow arrays."""
    array = pa.array(values, from_pandas=True) if isinstance(values, np.ndarray) else values
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks != 1:
            array = pc.cast(array, pa.large_string())  # never more than 2 GiB in one chunk
        array = array.combine_chunks()
    if pa.types.is_null(array.type):
        array = array.cast(pa.string())
    return array


def _is_missing(text: pa.Array) -> np.ndarray:
    """NA, or ``str.lower()`` in MISSING_TOKENS, i.e. equal to an ASCII-case variant of a token:
    the tokens are ASCII and no non-ASCII character lowercases to one of their letters."""
    token = pc.is_in(text, value_set=_MISSING_VARIANTS.cast(text.type))
    return pc.or_(pc.is_null(text), token).to_numpy(zero_copy_only=False)


def _buffers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n + 1, int64) and UTF-8 bytes of a string or large_string array."""
    _, offsets, data = text.buffers()
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    offsets = np.frombuffer(offsets, dtype=width)[text.offset : text.offset + len(text) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(1, np.uint8)
    return offsets, data


def _mask(text: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(text, pattern).fill_null(False).to_numpy(zero_copy_only=False)


def _parse_timestamps_ns(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each value on its own terms as int64 ns since the epoch (NaT as NAT_NS), and why a value
    did not parse (``_TS_*``; NA values are left to the MISSING_VALUE rule).

    ISO-8601 as ``pd.to_datetime(value, utc=True, format="ISO8601")`` parses that value alone
    (naive means UTC, an offset is applied to its own value only), except that a time outside
    the nanosecond range is refused instead of wrapped around; all-digit values of 10, 13, 16
    or 19 digits are epoch seconds, milliseconds, microseconds or nanoseconds. The common
    shape is parsed by Arrow, epoch values by numpy, any other value by pandas.
    """
    result = np.full(len(text), NAT_NS, dtype=np.int64)
    problem = np.full(len(text), _TS_FINE, dtype=np.int8)
    rows = np.flatnonzero(_mask(text, _ISO_FAST))
    shaped = text.take(rows)
    parsed = _utc_ns(shaped)
    if parsed is None:
        # The shape admits impossible dates (Feb 30, Apr 31, Feb 29 of a common year), which
        # Arrow's strptime rolls over into the next month: those go to pandas.
        date = pc.strptime(
            pc.utf8_slice_codeunits(shaped, 0, 10), "%Y-%m-%d", "s", error_is_null=True
        )
        day = pc.cast(pc.utf8_slice_codeunits(shaped, 8, 10), pa.int64())
        real = pc.equal(pc.day(date), day).fill_null(False).to_numpy(zero_copy_only=False)
        rows, shaped = rows[real], shaped.filter(real)
        parsed = _utc_ns(shaped)
        if parsed is None:  # never expected; pandas decides everything then
            rows, parsed = rows[:0], np.zeros(0, dtype=np.int64)
    result[rows] = parsed

    others = np.ones(len(text), dtype=bool)
    others[rows] = False
    others = np.flatnonzero(others & text.is_valid().to_numpy(zero_copy_only=False))
    if not len(others):
        return result, problem
    rest = text.take(others)
    epoch = _mask(rest, _EPOCH)
    if epoch.any():
        ns, in_range = _epoch_ns(rest.filter(epoch))
        result[others[epoch]] = np.where(in_range, ns, NAT_NS)
        problem[others[epoch]] = np.where(in_range, _TS_FINE, _TS_OUT_OF_RANGE)
    iso = ~epoch
    if iso.any():
        ns, out_of_range = _pandas_each_ns(rest.filter(iso))
        result[others[iso]] = ns
        problem[others[iso]] = np.where(
            out_of_range, _TS_OUT_OF_RANGE, np.where(ns == NAT_NS, _TS_NOT_ISO, _TS_FINE)
        )
    unreadable = np.flatnonzero(problem == _TS_NOT_ISO)
    if len(unreadable):
        digits = _mask(text.take(unreadable), r"^[0-9]+$")
        problem[unreadable[digits]] = _TS_DIGITS
    return result, problem


def _parse_iso8601_ns(text: pa.Array) -> np.ndarray:
    """The parsed nanoseconds of :func:`_parse_timestamps_ns` alone."""
    return _parse_timestamps_ns(text)[0]


def _epoch_ns(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """ns of _EPOCH text and whether it is inside the nanosecond range."""
    length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    dotted = pc.match_substring(text, ".").to_numpy(zero_copy_only=False)
    seconds = pa.array(dotted | (length == 10))
    whole = pc.if_else(seconds, pc.utf8_slice_codeunits(text, 0, 10), text)
    number = pc.cast(whole, pa.uint64()).to_numpy(zero_copy_only=False)
    fraction = pc.if_else(seconds, pc.utf8_rpad(pc.utf8_slice_codeunits(text, 11), 9, "0"), "0")
    fraction = pc.cast(fraction, pa.uint64()).to_numpy(zero_copy_only=False)
    digits = np.where(seconds.to_numpy(zero_copy_only=False), 10, length)
    unit = np.zeros(len(text), dtype=np.uint64)
    for count, ns in _EPOCH_UNIT_NS.items():
        unit[digits == count] = ns
    total = number * unit + fraction  # at most 10^19 + 10^9 - 1: fits uint64
    in_range = total <= np.uint64(INT64_MAX)
    return np.where(in_range, total, 0).astype(np.int64), in_range


def _pandas_each_ns(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """pandas' ISO-8601 reading of each value by itself (see _UTC_PROBE), as int64 ns, and
    whether a value that parsed lies outside the nanosecond range (then NAT_NS)."""
    n = len(text)
    year4 = _mask(text, r"^[0-9]{4}")
    cycles = np.zeros(n, dtype=np.int64)
    if year4.any():
        year = np.zeros(n, dtype=np.int64)
        year[year4] = pc.cast(
            pc.utf8_slice_codeunits(text.filter(year4), 0, 4), pa.int64()
        ).to_numpy(zero_copy_only=False)
        moved = _CYCLE_BASE_YEAR + (year - _CYCLE_BASE_YEAR) % _CYCLE_YEARS
        cycles = np.where(year4, (year - moved) // _CYCLE_YEARS, 0)
        moved_text = pc.binary_join_element_wise(
            pa.array(moved).cast(text.type),
            pc.utf8_slice_codeunits(text, 4),
            pa.scalar("", type=text.type),
        )
        text = pc.if_else(pa.array(year4), moved_text, text)
    values = np.empty(2 * n, dtype=object)
    values[0::2] = text.to_numpy(zero_copy_only=False)
    values[1::2] = _UTC_PROBE
    parsed = pd.to_datetime(
        pd.Series(values, dtype=object), utc=True, errors="coerce", format="ISO8601", cache=False
    )
    ns = parsed.to_numpy(dtype="datetime64[ns]").view(np.int64)
    if not (ns[1::2] == _UTC_PROBE_NS).all():
        raise RuntimeError("pandas did not parse the UTC probes between timestamps as UTC")
    ns = ns[0::2].copy()
    parsed_ok = ns != NAT_NS
    # Add the cycles back: one cycle (1.26e19 ns) is more than the whole int64 range, so only
    # -1, 0 or +1 cycles can land inside it, and the sum is exact in wrapping int64 arithmetic.
    int64 = np.iinfo(np.int64)
    fits = (
        (cycles == 0)
        | (cycles == 1) & (ns <= int64.max - _CYCLE_NS)
        | (cycles == -1) & (ns > int64.min + _CYCLE_NS)
    )
    with np.errstate(over="ignore"):
        shifted = ns + cycles * np.int64(_CYCLE_NS - 2**64)  # _CYCLE_NS mod 2^64
    inside = parsed_ok & fits
    return np.where(inside, shifted, NAT_NS), parsed_ok & ~fits


def _utc_ns(shaped: pa.Array) -> np.ndarray | None:
    """Nanoseconds since the epoch of text of the _ISO_FAST shape (naive text is UTC), or None
    when Arrow refuses a value."""
    result = np.zeros(len(shaped), dtype=np.int64)
    if not len(shaped):
        return result
    offsets, data = _buffers(shaped)
    end = offsets[1:]
    # Z, +HH:MM, +HHMM or +HH: the shape puts no other sign that close to the end
    sign = np.zeros(len(shaped), dtype=bool)
    for back in (6, 5, 3):
        sign |= np.isin(data[end - back], (ord("+"), ord("-")))
    zoned = (data[end - 1] == ord("Z")) | sign
    for kind, stamp in ((True, pa.timestamp("ns", "UTC")), (False, pa.timestamp("ns"))):
        rows = np.flatnonzero(zoned == kind)
        if not len(rows):
            continue
        part = shaped if len(rows) == len(shaped) else shaped.take(rows)
        try:
            ns = pc.cast(part, stamp).cast(pa.int64())
        except pa.ArrowInvalid:
            return None
        result[rows] = ns.to_numpy(zero_copy_only=False)
    return result


def _parse_numbers(text: pa.Array) -> np.ndarray:
    """``pd.to_numeric(text, errors="coerce").astype("float64")``, where a plain short decimal
    may also have a decimal comma (``50,4452``): those are cast by Arrow, any other value is
    parsed by pandas.

    pandas' result type depends on the whole column (all integers give Int64, where "-0" is
    0.0, not -0.0), so the values sent to pandas carry one sample of each kind of fast value.
    """
    result = np.full(len(text), np.nan)
    fast = _mask(text, _DECIMAL_FAST) & (
        pc.binary_length(text).fill_null(0).to_numpy(zero_copy_only=False)
        <= _DECIMAL_FAST_MAX_CHARS
    )
    rows = np.flatnonzero(fast)
    fast_text = text.take(rows)
    result[rows] = pc.cast(fast_text, pa.float64()).to_numpy(zero_copy_only=False)
    integral = ~pc.match_substring(fast_text, ".").to_numpy(zero_copy_only=False)
    samples = []
    if (~integral).any():
        samples.append("0.5")
    if (integral & (result[rows] >= 0)).any():
        samples.append("1")
    if (integral & (result[rows] < 0)).any():
        samples.append("-1")

    others = np.flatnonzero(~fast & ~pc.is_null(text).to_numpy(zero_copy_only=False))
    if len(others):
        # A decimal comma (European exports, where ";" separates the fields) is a decimal point.
        rest = text.take(others)
        comma = _mask(rest, _DECIMAL_COMMA) & (
            pc.binary_length(rest).to_numpy(zero_copy_only=False) <= _DECIMAL_FAST_MAX_CHARS
        )
        if comma.any():
            pointed = pc.replace_substring(rest.filter(comma), ",", ".")
            result[others[comma]] = pc.cast(pointed, pa.float64()).to_numpy(zero_copy_only=False)
            others = others[~comma]
            if "0.5" not in samples:
                samples.append("0.5")
    if len(others):
        values = [*text.take(others).to_pylist(), *samples]
        parsed = pd.to_numeric(
            pd.Series(pd.array(values, dtype=pd.StringDtype("python"))), errors="coerce"
        )
        result[others] = parsed.astype("float64").to_numpy()[: len(others)]
        integers = not pd.api.types.is_float_dtype(parsed.dtype)
    else:
        integers = "0.5" not in samples
    if integers:
        result[result == 0] = 0.0  # an integer column has no negative zero
    return result


def _outside_day(ping_ns: np.ndarray, partition_day: str) -> np.ndarray:
    """Parsed pings whose UTC date, written YYYY-MM-DD, is not ``partition_day``."""
    parsed = ping_ns != NAT_NS
    try:
        day = datetime.date.fromisoformat(partition_day)
    except (TypeError, ValueError):
        return parsed
    if day.isoformat() != partition_day:  # e.g. "20261005": no ping is written like that
        return parsed
    low = (day - datetime.date(1970, 1, 1)).days * NS_PER_DAY
    high = low + NS_PER_DAY
    int64 = np.iinfo(np.int64)
    if low > int64.max or high <= int64.min + 1:
        return parsed
    outside = ping_ns < max(low, int64.min)
    if high <= int64.max:
        outside |= ping_ns >= high
    return parsed & outside


def _utc_series(ns: np.ndarray) -> pd.Series:
    return pd.Series(ns.view("datetime64[ns]")).dt.tz_localize("UTC")


def _strings(text: pa.Array) -> pd.api.extensions.ExtensionArray:
    """Arrow text as a pandas "string" array."""
    return pd.StringDtype().__from_arrow__(text)


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


def courier_locations(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(lat, lon)`` of every raw row's courier, parsed as the contract parses them (NaN where
    a value is missing or not a number, and for every row of a file that could not be read):
    what routes a row of an export of every city to its city."""
    lat = _parse_column(raw["courier_lat"], "courier_lat").values
    lon = _parse_column(raw["courier_lon"], "courier_lon").values
    unreadable = raw["file_error"].notna().to_numpy(dtype=bool)
    lat, lon = lat.astype("float64", copy=True), lon.astype("float64", copy=True)
    lat[unreadable] = np.nan
    lon[unreadable] = np.nan
    return lat, lon
