import io
import sys

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


@settings(max_examples=150, deadline=None)
@given(st.lists(iso_text, max_size=60), st.integers(1, 4))
def test_timestamps_parse_exactly_as_pandas(values, repeat):
    values = values * repeat  # repeated values make pandas cache, which changes its order
    expected = pd.to_datetime(
        pd.Series(pd.array(values, dtype="string")), utc=True, errors="coerce", format="ISO8601"
    )
    parsed = schema._parse_iso8601_ns(pa.array(values, type=pa.string()))
    assert parsed.tolist() == expected.to_numpy(dtype="datetime64[ns]").view("int64").tolist()


NAIVE_AFTER_OFFSET = [
    ["2026-10-05T18:00:00+01:00", "2026-10-05T18:00:00", "2026-10-05 19:00:00.5"],
    ["2026-10-05T18:00:00Z", "2026-10-05T18:00:00-05:30", "x", "2026-10-05T20:00:00"],
    ["2026-10-05T18:00:00+01:00", "2026-10-05T18:00:00Z", "2026-10-05T18:00:00", "2026-10-05"],
]


@pytest.mark.parametrize("values", NAIVE_AFTER_OFFSET)
@pytest.mark.parametrize("repeat", [1, 30])  # 30: pandas caches and parses each value once
def test_naive_timestamps_after_an_offset_parse_exactly_as_pandas(values, repeat):
    # pandas carries an offset over to the naive values parsed after it; keep that behaviour
    values = values * repeat
    expected = pd.to_datetime(
        pd.Series(pd.array(values, dtype="string")), utc=True, errors="coerce", format="ISO8601"
    )
    parsed = schema._parse_iso8601_ns(pa.array(values, type=pa.string()))
    assert parsed.tolist() == expected.to_numpy(dtype="datetime64[ns]").view("int64").tolist()


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
