import bz2
import datetime
import gzip
import io
import lzma
import sys
import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_busyness.core import schema
from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.schema import (
    CLEAN_DTYPES,
    RAW_COLUMNS,
    QuarantineReason,
    UnparseableFileError,
    read_landing_file,
    read_raw_file,
    schema_problems,
    unparseable_file_rows,
    validate_pings,
)

pytestmark = pytest.mark.unit

DAY = "2026-10-05"
GOOD = {
    "courier_id": "c1",
    "order_number": "1001",
    "courier_location_timestamp": "2026-10-05T18:04:05.000001Z",
    "courier_lat": "50.4452",
    "courier_lon": "-104.6189",
    "order_created_timestamp": "2026-10-05T17:55:00Z",
    "restaurant_lat": "50.4460",
    "restaurant_lon": "-104.6170",
}

# One bad row per reason: (reason, overrides of the good row)
BAD_ROWS = [
    (QuarantineReason.MISSING_VALUE, {"courier_id": "NaN "}),
    (QuarantineReason.MISSING_VALUE, {"order_number": ""}),
    (QuarantineReason.UNPARSEABLE_TIMESTAMP, {"courier_location_timestamp": "not-a-time"}),
    (QuarantineReason.UNPARSEABLE_TIMESTAMP, {"order_created_timestamp": "2026-13-45T99:00:00Z"}),
    (QuarantineReason.UNPARSEABLE_NUMBER, {"courier_lat": "abc"}),
    (QuarantineReason.OUT_OF_RANGE, {"courier_lat": "95"}),
    (QuarantineReason.OUT_OF_RANGE, {"restaurant_lon": "200"}),
    (QuarantineReason.NULL_ISLAND, {"courier_lat": "0", "courier_lon": "0.0"}),
    (QuarantineReason.NULL_ISLAND, {"restaurant_lat": "0", "restaurant_lon": "0"}),
    (QuarantineReason.IMPLAUSIBLE_LOCATION, {"courier_lon": "104.6189"}),  # swapped sign
    (QuarantineReason.IMPLAUSIBLE_LOCATION, {"restaurant_lat": "-50.4460"}),
    (QuarantineReason.ORDER_AFTER_PING, {"order_created_timestamp": "2026-10-05T19:30:00Z"}),
    (
        QuarantineReason.OUTSIDE_PARTITION_DAY,
        {
            "courier_location_timestamp": "2026-10-06T01:00:00Z",
            "order_created_timestamp": "2026-10-06T00:50:00Z",
        },
    ),
]


def csv_bytes(rows: list[dict[str, str]], columns=RAW_COLUMNS) -> bytes:
    return pd.DataFrame(rows, columns=list(columns)).to_csv(index=False).encode()


def good_row(**overrides) -> dict[str, str]:
    return {**GOOD, **overrides}


@pytest.mark.parametrize(
    ("reason", "overrides"), BAD_ROWS, ids=[f"{r.value}-{i}" for i, (r, _) in enumerate(BAD_ROWS)]
)
def test_each_bad_row_is_quarantined_with_its_reason(reason, overrides):
    raw = read_raw_file(
        "f.csv", csv_bytes([good_row(), good_row(**{"order_number": "1002", **overrides})])
    )
    result = validate_pings(raw, DEFAULT_CITY, partition_day=DAY)
    assert len(result.clean) == 1
    assert result.quarantined["reason"].tolist() == [reason.value]
    assert result.quarantined["source_row"].tolist() == [1]
    # the quarantined row keeps exactly what arrived
    for column, value in overrides.items():
        assert result.quarantined[column].iloc[0] == value


def test_duplicates_keep_the_first_copy_even_across_files():
    first = read_raw_file("a.csv", csv_bytes([good_row(), good_row(order_number="2")]))
    redelivered = read_raw_file("a-copy.csv", csv_bytes([good_row(), good_row(order_number="2")]))
    # the same ping written differently is still the same ping
    reformatted = read_raw_file(
        "b.csv",
        csv_bytes(
            [
                good_row(
                    courier_lat="50.44520",
                    courier_location_timestamp="2026-10-05T18:04:05.000001+00:00",
                )
            ]
        ),
    )
    result = validate_pings(
        pd.concat([first, redelivered, reformatted], ignore_index=True), DEFAULT_CITY, DAY
    )
    assert len(result.clean) == 2
    assert set(result.clean["source_file"]) == {"a.csv"}
    assert result.reason_counts()["duplicate"] == 3


def test_clean_rows_are_typed_to_the_contract():
    result = validate_pings(read_raw_file("f.csv", csv_bytes([good_row()])), DEFAULT_CITY, DAY)
    assert schema_problems(result.clean) == []
    assert result.clean["courier_location_timestamp"].iloc[0] == pd.Timestamp(
        "2026-10-05T18:04:05.000001Z"
    )
    assert result.clean["courier_lat"].iloc[0] == pytest.approx(50.4452)


def test_schema_problems_name_the_column():
    result = validate_pings(read_raw_file("f.csv", csv_bytes([good_row()])), DEFAULT_CITY, DAY)
    broken = result.clean.drop(columns=["courier_id"]).assign(
        courier_lat=lambda f: f["courier_lat"].astype(str)
    )
    problems = schema_problems(broken)
    assert "missing column courier_id" in problems
    assert any(p.startswith("courier_lat has dtype") for p in problems)


def test_headers_are_matched_loosely_and_extra_columns_dropped():
    frame = pd.DataFrame([good_row()])
    frame.columns = [f" {c.upper()} " for c in frame.columns]
    frame["extra"] = "x"
    raw = read_raw_file("f.csv", frame.to_csv(index=False).encode())
    assert list(raw.columns) == [*RAW_COLUMNS, "source_file", "source_row", "file_error"]


def test_wrong_header_is_a_clear_file_error():
    content = csv_bytes([good_row()]).replace(b"courier_lat", b"lat_courier")
    with pytest.raises(
        UnparseableFileError,
        match=r"raw/dt=2026-10-05/x\.csv: missing required columns \['courier_lat'\]",
    ):
        read_raw_file("raw/dt=2026-10-05/x.csv", content)


def test_binary_garbage_is_a_clear_file_error():
    with pytest.raises(UnparseableFileError, match=r"bad\.parquet: cannot be parsed"):
        read_raw_file("bad.parquet", b"\x00\x01 not parquet")


def test_unparseable_file_is_quarantined_whole_and_counted():
    content = b'garbage that is no table\n"unclosed, quote\nsecond line\n\n   \nthird line\n'
    with pytest.raises(UnparseableFileError, match=r"bad\.csv: cannot be parsed"):
        read_raw_file("bad.csv", content)
    raw = pd.concat(
        [
            read_raw_file("ok.csv", csv_bytes([good_row()])),
            unparseable_file_rows("bad.csv", content, "bad.csv: boom"),
        ],
        ignore_index=True,
    )
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) == 1
    # the data rows are the non-blank lines after the header line
    assert result.quarantined["source_row"].tolist() == [0, 1, 2]
    labels = result.quarantined[["reason", "source_file", "detail"]].drop_duplicates()
    assert labels.values.tolist() == [["unparseable_file", "bad.csv", "bad.csv: boom"]]


def test_wrong_header_file_quarantines_each_of_its_rows():
    rows = [good_row(order_number=str(1000 + i)) for i in range(7)]
    frame = pd.DataFrame(rows).rename(columns={"courier_lat": "lat_courier"})
    frame.columns = [f" {c.upper()} " for c in frame.columns]
    content = frame.to_csv(index=False).encode()
    with pytest.raises(UnparseableFileError, match="missing required columns") as error:
        read_raw_file("legacy.csv", content)
    raw = unparseable_file_rows("legacy.csv", content, str(error.value))
    assert list(raw.columns) == [*RAW_COLUMNS, "source_file", "source_row", "file_error"]
    assert raw["source_row"].tolist() == list(range(7))
    assert raw["courier_lat"].isna().all()  # the missing column
    assert raw["order_number"].tolist() == [str(1000 + i) for i in range(7)]  # kept as text
    assert all(str(raw[column].dtype) == "string" for column in (*RAW_COLUMNS, "file_error"))
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) == 0 and len(result.quarantined) == 7
    assert result.reason_counts()["unparseable_file"] == 7
    assert result.quarantined["source_row"].tolist() == list(range(7))
    assert set(result.quarantined["source_file"]) == {"legacy.csv"}
    assert set(result.quarantined["detail"]) == {str(error.value)}


def test_parquet_file_missing_a_column_quarantines_each_of_its_rows():
    buffer = io.BytesIO()
    pd.DataFrame([good_row(), good_row(order_number="2")]).drop(columns="courier_id").to_parquet(
        buffer
    )
    content = buffer.getvalue()
    with pytest.raises(UnparseableFileError, match=r"missing required columns \['courier_id'\]"):
        read_raw_file("f.parquet", content)
    result = validate_pings(unparseable_file_rows("f.parquet", content, "boom"), DEFAULT_CITY, DAY)
    assert result.quarantined["source_row"].tolist() == [0, 1]
    assert result.quarantined["order_number"].tolist() == ["1001", "2"]
    assert set(result.quarantined["reason"]) == {"unparseable_file"}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.parquet", b"\x00\x01 not parquet"),
        ("bad.csv", b"\x00\x01 not parquet"),
        ("bad.csv", bytes(range(256)) * 4),
        ("bad.csv", b"\xff\xfe\x81 not utf-8"),
    ],
    ids=["parquet-name", "csv-name", "all-bytes", "not-utf8-one-line"],
)
def test_garbage_bytes_are_quarantined_as_at_least_one_record(name, content):
    with pytest.raises(UnparseableFileError) as error:
        read_raw_file(name, content)
    raw = unparseable_file_rows(name, content, str(error.value))
    assert len(raw) >= 1
    assert raw["source_row"].tolist() == list(range(len(raw)))
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) == 0
    assert result.reason_counts()["unparseable_file"] == len(raw)


@pytest.mark.parametrize("content", [b"", b"  \n\r\n\t"])
def test_blank_unparseable_file_gives_no_rows(content):
    raw = unparseable_file_rows("empty.csv", content, "empty.csv: boom")
    assert len(raw) == 0
    assert list(raw.columns) == [*RAW_COLUMNS, "source_file", "source_row", "file_error"]
    assert len(validate_pings(raw, DEFAULT_CITY, DAY).quarantined) == 0


def test_empty_file_gives_no_rows():
    assert len(read_raw_file("empty.csv", b"")) == 0
    assert len(read_raw_file("header-only.csv", csv_bytes([]))) == 0


def test_parquet_files_are_read_as_text():
    buffer = io.BytesIO()
    pd.DataFrame([good_row()]).astype({"courier_lat": float}).to_parquet(buffer)
    raw = read_raw_file("f.parquet", buffer.getvalue())
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) == 1


# --- Files as real exports write them (issue 14, item 7): each kind reads as the plain CSV ----

EXPORT_ROWS = [
    good_row(order_number=str(1000 + i), courier_lat=f"50.44{i:02d}", courier_id=f"c{i}")
    for i in range(5)
]


def export_bytes(rows=EXPORT_ROWS, sep=",", newline="\n") -> str:
    return pd.DataFrame(rows, columns=list(RAW_COLUMNS)).to_csv(
        index=False, sep=sep, lineterminator=newline
    )


def assert_reads_like_plain(name: str, content: bytes, rows=EXPORT_ROWS) -> schema.LandingRead:
    read = read_landing_file(name, content)
    assert read.error is None
    expected = read_raw_file("plain.csv", export_bytes(rows).encode())
    pd.testing.assert_frame_equal(read.frame[list(RAW_COLUMNS)], expected[list(RAW_COLUMNS)])
    assert read.frame["source_file"].unique().tolist() == [name]
    assert read.frame["source_row"].tolist() == list(range(len(rows)))
    pd.testing.assert_frame_equal(read_raw_file(name, content), read.frame)
    result = validate_pings(read.frame, DEFAULT_CITY, DAY)
    assert len(result.clean) == len(rows)
    return read


def test_ordinary_csv_takes_the_arrow_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the slow path ran")

    for slow in ("_pandas_table", "_fallback_decode", "_is_utf8", "_to_utf8"):
        monkeypatch.setattr(schema, slow, refuse)
    read = assert_reads_like_plain("f.csv", export_bytes().encode())
    assert read.format == schema.FileFormat(kind="csv", encoding="utf-8", delimiter=",")


def test_gzip_csv_is_read():
    read = assert_reads_like_plain("f.csv.gz", gzip.compress(export_bytes().encode()))
    assert read.format.compression == "gzip"


@pytest.mark.parametrize(
    ("name", "compress", "compression"),
    [
        ("f.csv", gzip.compress, "gzip"),  # the magic bytes decide, not the name
        ("F.CSV.GZ", gzip.compress, "gzip"),
        ("f.csv.bz2", bz2.compress, "bzip2"),
        ("f.csv.xz", lzma.compress, "xz"),
        ("f.csv.zip", lambda data: zipped({"inner.csv": data}), "zip"),
        ("f.zip.gz", lambda data: gzip.compress(zipped({"inner.csv": data})), "gzip+zip"),
    ],
)
def test_compressed_files_are_read(name, compress, compression):
    read = assert_reads_like_plain(name, compress(export_bytes().encode()))
    assert read.format.compression == compression


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("f.csv.gz", gzip.compress(b"")),
        ("f.csv.gz", gzip.compress(export_bytes([]).encode())),  # a header only
        ("f.parquet.gz", gzip.compress(b"")),
        ("f.csv", b"\xff\xfe" + " \n".encode("utf-16-le")),
    ],
    ids=["empty-gzip", "header-only-gzip", "empty-gzip-parquet", "blank-utf16"],
)
def test_compressed_or_encoded_empty_files_give_no_rows(name, content):
    read = read_landing_file(name, content)
    assert (read.error, len(read.frame)) == (None, 0)
    assert list(read.frame.columns) == [*RAW_COLUMNS, "source_file", "source_row", "file_error"]


def zipped(members: dict[str, bytes]) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return sink.getvalue()


def test_zipped_parquet_and_upper_case_parquet_are_read():
    buffer = io.BytesIO()
    pd.DataFrame(EXPORT_ROWS).to_parquet(buffer)
    assert assert_reads_like_plain("F.PARQUET", buffer.getvalue()).format.kind == "parquet"
    read = assert_reads_like_plain("f.zip", zipped({"export/f.parquet": buffer.getvalue()}))
    assert (read.format.kind, read.format.compression) == ("parquet", "zip")


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("f.csv.gz", gzip.compress(b"courier_id,order_number\n" * 50)[:-9], "as gzip"),
        ("f.zip", zipped({"a.csv": b"x", "b.csv": b"y"}), "must hold exactly one file"),
    ],
    ids=["truncated-gzip", "zip-of-two"],
)
def test_broken_archives_are_quarantined_whole(name, content, error):
    read = read_landing_file(name, content)
    assert error in read.error and read.error.startswith(f"{name}: ")
    assert len(read.frame) >= 1
    assert set(validate_pings(read.frame, DEFAULT_CITY, DAY).quarantined["reason"]) == {
        "unparseable_file"
    }


def test_compressed_file_with_a_wrong_header_counts_its_source_rows():
    rows = [good_row(order_number=str(i)) for i in range(7)]
    content = gzip.compress(export_bytes(rows).replace("courier_lat", "lat").encode())
    read = read_landing_file("legacy.csv.gz", content)
    assert "missing required columns ['courier_lat']" in read.error
    assert read.frame["source_row"].tolist() == list(range(7))
    assert read.frame["order_number"].tolist() == [str(i) for i in range(7)]


def test_tsv_file_is_read():
    read = assert_reads_like_plain("f.tsv", export_bytes(sep="\t").encode())
    assert read.format.delimiter == "\t"


def test_tab_separated_file_named_csv_is_read():
    read = assert_reads_like_plain("f.csv", export_bytes(sep="\t").encode())
    assert read.format.as_metadata()["delimiter"] == "tab"


@pytest.mark.parametrize("sep", [";", "|"])
def test_semicolon_and_pipe_files_are_read(sep):
    read = assert_reads_like_plain("f.csv", export_bytes(sep=sep).encode())
    assert read.format.delimiter == sep


def test_delimiter_is_the_one_that_splits_the_header_into_contract_columns():
    rows = [good_row(courier_id="a;b;c;d;e;f;g;h;i;j")]  # more semicolons than commas overall
    read = assert_reads_like_plain("f.csv", export_bytes(rows).encode(), rows)
    assert read.format.delimiter == ","


def test_excel_export_is_read():
    """What Excel writes in a locale with a decimal comma: UTF-8 with a byte-order mark, CRLF
    line ends, semicolons between fields and decimal commas."""
    text = export_bytes(sep=";", newline="\r\n")
    for row in EXPORT_ROWS:
        for column in schema.COORDINATE_COLUMNS:
            text = text.replace(f";{row[column]};", f";{row[column].replace('.', ',')};")
            text = text.replace(f";{row[column]}\r", f";{row[column].replace('.', ',')}\r")
    assert "50,44" in text and "50.44" not in text
    content = "\ufeff".encode() + text.encode()
    read = read_landing_file("export.csv", content)
    assert read.error is None
    assert (read.format.encoding, read.format.delimiter) == ("utf-8-sig", ";")
    result = validate_pings(read.frame, DEFAULT_CITY, DAY)
    plain = validate_pings(read_raw_file("p.csv", export_bytes().encode()), DEFAULT_CITY, DAY)
    columns = [c for c in result.clean.columns if c != "source_file"]
    pd.testing.assert_frame_equal(result.clean[columns], plain.clean[columns])


@pytest.mark.parametrize(
    ("encode", "encoding"),
    [
        (lambda text: b"\xff\xfe" + text.encode("utf-16-le"), "utf-16-le"),
        (lambda text: b"\xfe\xff" + text.encode("utf-16-be"), "utf-16-be"),
        (lambda text: text.encode("utf-16-le"), "utf-16-le"),  # without a byte-order mark
        (lambda text: text.encode("utf-16-be"), "utf-16-be"),
        (lambda text: text.encode("utf-32"), "utf-32-le"),
    ],
    ids=["utf16-le-bom", "utf16-be-bom", "utf16-le", "utf16-be", "utf32"],
)
def test_utf16_files_are_read(encode, encoding):
    rows = [*EXPORT_ROWS, good_row(order_number="9", courier_id="Zoë 😀")]
    read = assert_reads_like_plain("f.csv", encode(export_bytes(rows)), rows)
    assert read.format.encoding == encoding


def test_one_latin1_byte_is_read_as_cp1252_and_its_row_flagged():
    rows = [good_row(order_number=str(i), courier_id=f"c{i}") for i in range(6)]
    rows[1]["courier_id"] = "Zoë"  # in UTF-8
    rows[3]["courier_id"] = "José"  # the file's only non-UTF-8 byte: é as cp1252
    text = export_bytes(rows)
    content = text.replace("José", "JOSE_").encode().replace(b"JOSE_", "José".encode("cp1252"))
    content += b"7,8,2026-10-05T18:00:00Z,50.44,-104.61,2026-10-05T18:00:00Z,50.44,\x81\x80\n"
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")
    read = read_landing_file("f.csv", content)
    assert read.error is None
    assert read.frame["courier_id"].tolist()[:6] == [r["courier_id"] for r in rows]
    assert read.frame["restaurant_lon"].iloc[6] == "\x81€"  # undefined in cp1252: as Latin-1
    assert read.format.encoding == "utf-8+cp1252"
    assert (read.format.fallback_rows, read.format.fallback_source_rows) == (2, (3, 6))
    assert read.format.as_metadata()["fallback_decoded_rows"] == 2
    result = validate_pings(read.frame, DEFAULT_CITY, DAY)
    assert len(result.clean) == 6
    assert result.quarantined["reason"].tolist() == ["unparseable_number"]


def test_epoch_seconds_and_milliseconds_are_read_as_utc():
    def epoch(value: str, digits: int) -> str:
        ns = pd.Timestamp(value).value
        if digits == 10:
            return f"{ns // 10**9}.{ns % 10**9:09d}".rstrip("0").rstrip(".")
        return str(ns // 10 ** (19 - digits))

    rows = []
    for i, digits in enumerate((10, 13, 16, 19)):
        ping, order = "2026-10-05T18:04:05.123456Z", "2026-10-05T17:55:00Z"
        rows.append(
            good_row(
                order_number=str(i),
                courier_location_timestamp=epoch(ping, digits),
                order_created_timestamp=epoch(order, digits),
            )
        )
    rows.append(
        good_row(order_number="9", courier_location_timestamp=epoch("2026-10-05T18:04:05Z", 10))
    )
    result = validate_pings(read_raw_file("f.csv", csv_bytes(rows)), DEFAULT_CITY, DAY)
    assert len(result.quarantined) == 0
    pings = result.clean["courier_location_timestamp"].tolist()
    assert pings[0] == pings[3] == pd.Timestamp("2026-10-05T18:04:05.123456Z")
    assert pings[1] == pd.Timestamp("2026-10-05T18:04:05.123Z")  # milliseconds
    assert pings[2] == pd.Timestamp("2026-10-05T18:04:05.123456Z")
    assert pings[4] == pd.Timestamp("2026-10-05T18:04:05Z")
    assert result.clean["order_created_timestamp"].nunique() == 1


cell_values = st.one_of(
    st.sampled_from(
        ["", "NaN ", "abc", "0", "95", "-104.6189", "50.4452", "104.6", "2026-10-05T18:00:00Z", "x"]
    ),
    st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=6),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.fixed_dictionaries({c: cell_values for c in RAW_COLUMNS}), max_size=25),
    st.integers(0, 5),
)
def test_rows_in_equal_clean_plus_quarantined(rows, copies):
    rows = rows + [good_row(order_number=str(i)) for i in range(copies)] * 2
    raw = read_raw_file("f.csv", csv_bytes(rows))
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) + len(result.quarantined) == len(raw) == len(rows)
    assert result.quarantined["reason"].isin([r.value for r in QuarantineReason]).all()
    assert set(result.clean["source_row"]).isdisjoint(result.quarantined["source_row"])
    assert list(result.clean.dtypes.astype(str)) == list(CLEAN_DTYPES.values())
    assert np.isfinite(result.clean[["courier_lat", "courier_lon"]].to_numpy()).all()


# --- The fast (Arrow) paths must agree exactly with the pandas reference they replace --------


def test_whitespace_set_is_pythons():
    every_space = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert set(schema.PYTHON_WHITESPACE) == every_space


def test_no_non_ascii_character_lowercases_into_a_missing_token():
    token_chars = set("".join(schema.MISSING_TOKENS))
    assert all(not set(chr(c).lower()) <= token_chars for c in range(128, sys.maxunicode + 1))


iso_parts = st.tuples(
    st.sampled_from(["2026", "1699", "1700", "2259", "2262", "2028", "1900", "26"]),
    st.sampled_from(["-10-05", "-02-29", "-02-30", "-04-31", "-13-01", "-00-10", "1005", "-10-5"]),
    st.sampled_from(
        ["T18:04:05", " 00:00:00", "T23:59:59", "T24:00:00", "T18:04:60", "T18:04", "t18:04:05", ""]
    ),
    st.sampled_from(["", ".1", ".000001", ".123456789", ".1234567891", "."]),
    st.sampled_from(
        ["Z", "", "+00:00", "-00:00", "+01:00", "-05:30", "+0000", "z", " Z", "+24:00"]
    ),
)
iso_text = st.one_of(iso_parts.map("".join), st.none(), st.text(max_size=8))


def pandas_each(values: list[str | None]) -> list[int]:
    """The reference: pandas' ISO-8601 reading of each value alone (as int64 ns, NaT as int64
    min). Parsing a whole column, pandas carries the offset of one value over to the naive
    values after it (a zoneless value beside a "+05:30" one is shifted by 5 h 30); alone, each
    value is read on its own terms, which is the contract."""
    return [
        int(
            pd.to_datetime(
                pd.Series(pd.array([value], dtype="string")),
                utc=True,
                errors="coerce",
                format="ISO8601",
            )
            .to_numpy(dtype="datetime64[ns]")
            .view("int64")[0]
        )
        for value in values
    ]


@settings(max_examples=150, deadline=None)
@given(st.lists(iso_text, max_size=60), st.integers(1, 4))
def test_timestamps_parse_as_pandas_parses_each_value_alone(values, repeat):
    # This compared with pandas parsing the whole column, which shifts zoneless values after an
    # offset (issue 14, item 1): the reference is now pandas on each value alone.
    values = values * repeat  # repeated values made pandas cache, which changed its order
    parsed = schema._parse_iso8601_ns(pa.array(values, type=pa.string()))
    assert parsed.tolist() == pandas_each(values)


offsets = st.sampled_from(["", "", "Z", "+05:30", "-06:00", "+0100", "-02", "+00:00", " +05:30"])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.datetimes(
                min_value=datetime.datetime(1990, 1, 1), max_value=datetime.datetime(2100, 1, 1)
            ),
            st.sampled_from(["T", " "]),
            offsets,
        ),
        max_size=40,
    )
)
def test_each_valid_timestamp_is_read_with_its_own_offset_or_as_utc(stamps):
    values = [moment.isoformat(sep) + offset for moment, sep, offset in stamps]
    expected = []
    for moment, _, offset in stamps:
        sign, digits = (-1 if "-" in offset else 1), offset.strip(" Z+-").replace(":", "")
        minutes = int(digits[:2] or 0) * 60 + int(digits[2:] or 0)
        utc = moment - sign * datetime.timedelta(minutes=minutes)
        expected.append(pd.Timestamp(utc, tz="UTC").value)
    parsed = schema._parse_iso8601_ns(pa.array(values, type=pa.string()))
    assert parsed.tolist() == expected == pandas_each(values)


NAIVE_AFTER_OFFSET = [
    ["2026-10-05T18:00:00+01:00", "2026-10-05T18:00:00", "2026-10-05 19:00:00.5"],
    ["2026-10-05T18:00:00Z", "2026-10-05T18:00:00-05:30", "x", "2026-10-05T20:00:00"],
    ["2026-10-05T18:00:00+01:00", "2026-10-05T18:00:00Z", "2026-10-05T18:00:00", "2026-10-05"],
    ["2026-10-05T18:00+0100", "2026-10-05T18:00", "2026-10-05T18:00:00 +05", "2026-10-05 18"],
    ["20261005T180000+0100", "20261005T180000", "2026-10-05T18:00:00.5-06:00", "20261005"],
]


@pytest.mark.parametrize("values", NAIVE_AFTER_OFFSET)
@pytest.mark.parametrize("repeat", [1, 30])  # 30: pandas caches and parses each value once
def test_naive_timestamps_after_an_offset_are_utc(values, repeat):
    # pandas carries an offset over to the naive values parsed after it; this test used to keep
    # that behaviour, which silently shifted zoneless (UTC) pings by the offset of another row.
    values = values * repeat
    parsed = schema._parse_iso8601_ns(pa.array(values, type=pa.string()))
    assert parsed.tolist() == pandas_each(values)
    for value, ns in zip(values, parsed.tolist(), strict=True):
        if value.endswith(("T18:00:00", "T18:00", "T180000", " 18")):  # zoneless means UTC
            assert ns == pd.Timestamp("2026-10-05T18:00:00", tz="UTC").value


def ping_row(order_number: int, ping: str, order: str) -> dict[str, str]:
    return good_row(
        order_number=str(order_number),
        courier_location_timestamp=ping,
        order_created_timestamp=order,
    )


def test_zoneless_value_in_one_file_is_not_shifted_by_an_offset_in_another():
    day = "2026-11-20"
    offset = read_raw_file(
        "a.csv", csv_bytes([ping_row(1, "2026-11-20T12:00:00+05:30", "2026-11-20T11:55:00+05:30")])
    )
    zoneless = read_raw_file(
        "b.csv", csv_bytes([ping_row(2, "2026-11-20T12:00:00.5", "2026-11-20T11:55:00")])
    )
    result = validate_pings(pd.concat([offset, zoneless], ignore_index=True), DEFAULT_CITY, day)
    assert len(result.quarantined) == 0
    pings = dict(
        zip(result.clean["source_file"], result.clean["courier_location_timestamp"], strict=True)
    )
    assert pings == {
        "a.csv": pd.Timestamp("2026-11-20T06:30:00Z"),
        "b.csv": pd.Timestamp("2026-11-20T12:00:00.5Z"),  # was 06:30:00.5
    }


def test_file_alternating_offset_and_zoneless_values_reads_each_on_its_own_terms():
    base = pd.Timestamp("2026-11-20T08:00:00")
    rows, expected = [], []
    for i in range(100):
        local = base + pd.Timedelta(minutes=5 * i, microseconds=i)
        suffix = "-06:00" if i % 2 == 0 else ""
        ping, order = local.isoformat() + suffix, (local - pd.Timedelta(minutes=3)).isoformat()
        rows.append(ping_row(i, ping, order + suffix))
        expected.append(local.tz_localize("UTC") + pd.Timedelta(hours=6 if suffix else 0))
    result = validate_pings(read_raw_file("f.csv", csv_bytes(rows)), DEFAULT_CITY, "2026-11-20")
    assert len(result.quarantined) == 0  # 51 were quarantined, 49 accepted shifted by 6 h
    assert result.clean["courier_location_timestamp"].tolist() == expected


def test_zoneless_file_beside_an_offset_file_is_all_clean():
    early = [
        ping_row(i, f"2026-11-20T0{i % 5}:{i:02d}:00", f"2026-11-20T0{i % 5}:{i:02d}:00")
        for i in range(40)
    ]
    offset = [
        ping_row(1000 + i, f"2026-11-20T12:{i:02d}:00+05:30", f"2026-11-20T12:{i:02d}:00+05:30")
        for i in range(40)
    ]
    raw = pd.concat(
        [
            read_raw_file("offset.csv", csv_bytes(offset)),
            read_raw_file("utc.csv", csv_bytes(early)),
        ],
        ignore_index=True,
    )
    result = validate_pings(raw, DEFAULT_CITY, "2026-11-20")
    assert result.reason_counts()["outside_partition_day"] == 0  # was every row of utc.csv
    assert len(result.clean) == 80
    utc = result.clean[result.clean["source_file"] == "utc.csv"]
    assert utc["courier_location_timestamp"].tolist() == [
        pd.Timestamp(row["courier_location_timestamp"], tz="UTC") for row in early
    ]


@pytest.mark.parametrize(
    "value",
    [
        "9999-01-01T00:00:00Z",
        "1677-09-21T00:12:44+01:00",  # in range before the offset: pandas wraps it to 2262
        "16770921T001244+0100",
        "2262-04-11T23:47:16.854775808Z",
        "2262-04-12",
        "1000-01-01T00:00:00",
        "9999999999",  # epoch seconds in 2286
        "9999999999999999999",  # epoch nanoseconds
    ],
)
def test_timestamps_outside_the_nanosecond_range_are_quarantined_as_such(value):
    raw = read_raw_file("f.csv", csv_bytes([good_row(courier_location_timestamp=value)]))
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert result.quarantined["reason"].tolist() == ["unparseable_timestamp"]
    assert result.quarantined["detail"].tolist() == [
        "courier_location_timestamp is outside the 64-bit nanosecond range "
        "(1677-09-21T00:12:43.145224193Z to 2262-04-11T23:47:16.854775807Z)"
    ]


def test_timestamps_at_the_ends_of_the_nanosecond_range_parse_exactly():
    values = [
        "1677-09-21T00:12:43.145224193Z",
        "1677-09-21T01:12:43.145224193+01:00",
        "1677-09-20T23:12:43.145224193-01:00",
        "2262-04-11T23:47:16.854775807",
        "2262-04-12T00:47:16.854775807+01:00",
        "22620411T234716.854775807Z",
        "1699-12-31T23:00:00-01:00",
    ]
    parsed = schema._parse_iso8601_ns(pa.array(values, type=pa.string()))
    low, high = np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max
    assert parsed.tolist() == [
        low,
        low,
        low,
        high,
        high,
        high,
        pd.Timestamp("1700-01-01", tz="UTC").value,
    ]


def test_other_bad_timestamps_say_what_they_are():
    rows = [
        good_row(order_number="1", courier_location_timestamp="yesterday 7pm"),
        good_row(order_number="2", order_created_timestamp="175968000"),  # 9 digits
    ]
    result = validate_pings(read_raw_file("f.csv", csv_bytes(rows)), DEFAULT_CITY, DAY)
    assert result.quarantined["detail"].tolist() == [
        "courier_location_timestamp is not ISO-8601 or an epoch time",
        "order_created_timestamp is all digits but not an epoch time (10 digits: seconds, "
        "13: milliseconds, 16: microseconds, 19: nanoseconds)",
    ]


number_text = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,18}(\.[0-9]{0,18})?\Z"),
    st.sampled_from(
        ["-0", "-0.0", "0", "+0", "-00", "inf", "-inf", "nan", "1e3", ".5", "5.", "1_0", "abc", ""]
    ),
    st.sampled_from(["18446744073709551616", "-9223372036854775809", "50.4452", "-104.618900"]),
    st.none(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(number_text, max_size=30))
def test_numbers_parse_exactly_as_pandas(values):
    expected = pd.to_numeric(pd.Series(pd.array(values, dtype="string")), errors="coerce")
    expected = expected.astype("float64").to_numpy()
    parsed = schema._parse_numbers(pa.array(values, type=pa.string()))
    assert np.array_equal(parsed, expected, equal_nan=True)
    assert np.array_equal(
        np.signbit(parsed[~np.isnan(parsed)]), np.signbit(expected[~np.isnan(expected)])
    )


csv_cells = st.one_of(
    st.sampled_from(
        ["c1", "1001", "50.4452", "", "NaN ", " x ", '"q"', '"a,b"', '"l1\nl2"', '"x""y"', 'a"b']
    ),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(csv_cells, min_size=8, max_size=8), max_size=6),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.booleans(),
)
def test_csv_reads_exactly_as_pandas(rows, newline, final_newline):
    lines = [",".join(RAW_COLUMNS), *(",".join(row) for row in rows)]
    content = (newline.join(lines) + (newline if final_newline else "")).encode()
    try:
        expected = schema._read_with_pandas("f.csv", content).loc[:, list(RAW_COLUMNS)]
    except UnparseableFileError as error:
        with pytest.raises(UnparseableFileError) as raised:
            read_raw_file("f.csv", content)
        assert str(raised.value) == str(error)
        return
    raw = read_raw_file("f.csv", content)
    pd.testing.assert_frame_equal(
        raw.loc[:, list(RAW_COLUMNS)], expected.astype("string").reset_index(drop=True)
    )


@pytest.mark.parametrize(
    "content",
    [
        csv_bytes([good_row(courier_id=" c1")]).replace(b"\n", b"\r"),  # bare carriage returns
        csv_bytes([good_row()]) + b'c2,1,2,3,4,5,6,"unterminated',  # ends inside a quote
        csv_bytes([good_row()]).replace(b"courier_id", b"courier_id,courier_id", 1),  # ragged
        csv_bytes([{**good_row(), " Courier_ID ": "c9"}], columns=[*RAW_COLUMNS, " Courier_ID "]),
        "\ufeff".encode() + csv_bytes([good_row()]),  # byte-order mark
        csv_bytes([good_row(courier_id="a\nb")]),  # quoted newline
        csv_bytes([good_row()]) + b"\n\n",  # trailing blank lines
        csv_bytes([good_row()]) + b"1,2,3\n",  # ragged row
    ],
)
def test_odd_csv_files_read_as_pandas_reads_them(content):
    try:
        expected = schema._read_with_pandas("f.csv", content).loc[:, list(RAW_COLUMNS)]
    except UnparseableFileError as error:
        with pytest.raises(UnparseableFileError) as raised:
            read_raw_file("f.csv", content)
        assert str(raised.value) == str(error)
        return
    raw = read_raw_file("f.csv", content)
    pd.testing.assert_frame_equal(
        raw.loc[:, list(RAW_COLUMNS)], expected.astype("string").reset_index(drop=True)
    )


def test_large_repetitive_file_reads_as_pandas_reads_it():
    rows = [good_row(order_number=str(i), courier_id=f"c{i % 7}") for i in range(5000)]
    content = csv_bytes(rows)
    expected = schema._read_with_pandas("f.csv", content).loc[:, list(RAW_COLUMNS)]
    raw = read_raw_file("f.csv", content)
    assert str(raw["courier_id"].dtype) == "string"
    pd.testing.assert_frame_equal(raw.loc[:, list(RAW_COLUMNS)], expected.astype("string"))


def test_partition_day_bounds_are_exact():
    stamps = [
        "2026-10-05T00:00:00Z",
        "2026-10-05 23:59:59.999999999",
        "2026-10-05T23:59:59.999999999+00:00",
        "2026-10-06T00:00:00Z",
        "2026-10-04T23:59:59.999999999Z",
    ]
    rows = [
        good_row(
            order_number=str(i),
            courier_location_timestamp=t,
            order_created_timestamp=t[:10] + "T00:00:00Z",
        )
        for i, t in enumerate(stamps)
    ]
    result = validate_pings(read_raw_file("f.csv", csv_bytes(rows)), DEFAULT_CITY, DAY)
    assert result.clean["source_row"].tolist() == [0, 1, 2]
    assert result.quarantined["reason"].tolist() == ["outside_partition_day"] * 2
    for odd_day in ("20261005", "2026-10-5"):  # never how a ping's day is written: all outside
        result = validate_pings(read_raw_file("f.csv", csv_bytes(rows)), DEFAULT_CITY, odd_day)
        assert len(result.clean) == 0


@pytest.mark.parametrize("storage", ["pyarrow", pd.ArrowDtype(pa.string()), object])
def test_result_does_not_depend_on_text_storage(storage):
    rows = [good_row(order_number=str(i)) for i in range(3)] + [good_row(**o) for _, o in BAD_ROWS]
    raw = read_raw_file("f.csv", csv_bytes(rows))
    expected = validate_pings(raw, DEFAULT_CITY, DAY)
    dtype = pd.StringDtype("pyarrow") if storage == "pyarrow" else storage
    result = validate_pings(raw.astype({c: dtype for c in RAW_COLUMNS}), DEFAULT_CITY, DAY)
    pd.testing.assert_frame_equal(result.clean, expected.clean)
    assert result.quarantined["reason"].tolist() == expected.quarantined["reason"].tolist()


# --- routing an export of every city: the courier's position as the contract reads it --------


def test_courier_locations_parse_as_the_contract_and_are_unknown_when_unreadable():
    rows = [
        good_row(),
        good_row(order_number="1002", courier_lat=" 40.7549 ", courier_lon="-73.984"),
        good_row(order_number="1003", courier_lat="abc"),
        good_row(order_number="1004", courier_lon=""),
        good_row(order_number="1005", courier_lat="NaN "),
    ]
    content = b'garbage that is no table\n"unclosed, quote\nsecond line\n'
    raw = pd.concat(
        [
            read_raw_file("ok.csv", csv_bytes(rows)),
            unparseable_file_rows("bad.csv", content, "bad.csv: boom"),
        ],
        ignore_index=True,
    )
    lat, lon = schema.courier_locations(raw)
    assert lat.dtype == lon.dtype == np.float64
    assert len(lat) == len(lon) == len(raw) == 7
    np.testing.assert_array_equal(lat[:2], [50.4452, 40.7549])
    np.testing.assert_array_equal(lon[:2], [-104.6189, -73.984])
    # a value that is not a number, a missing value, every row of an unreadable file: unknown
    assert np.isnan(lat[2]) and not np.isnan(lon[2])
    assert np.isnan(lon[3]) and not np.isnan(lat[3])
    assert np.isnan(lat[4])
    assert np.isnan(lat[5:]).all() and np.isnan(lon[5:]).all()
    # the raw frame is not changed
    assert raw["courier_lat"].iloc[1] == " 40.7549 "


def test_outside_service_area_is_a_reason_the_contract_itself_never_gives():
    """A ping outside the radius but plausible is kept by validation (a courier just beyond the
    edge of a single-city export); only routing an export of every city refuses it."""
    assert QuarantineReason.OUTSIDE_SERVICE_AREA.value == "outside_service_area"
    beyond_edge = good_row(order_number="1002", courier_lat="50.6252")  # ~20 km north
    result = validate_pings(
        read_raw_file("f.csv", csv_bytes([good_row(), beyond_edge])), DEFAULT_CITY, DAY
    )
    assert len(result.clean) == 2
    assert result.reason_counts()[QuarantineReason.OUTSIDE_SERVICE_AREA.value] == 0
