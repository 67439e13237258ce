import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.schema import (
    CLEAN_DTYPES,
    RAW_COLUMNS,
    QuarantineReason,
    UnparseableFileError,
    read_raw_file,
    schema_problems,
    unparseable_file_record,
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
    (QuarantineReason.OUTSIDE_PARTITION_DAY, {"courier_location_timestamp": "2026-10-06T01:00:00Z", "order_created_timestamp": "2026-10-06T00:50:00Z"}),
]


def csv_bytes(rows: list[dict[str, str]], columns=RAW_COLUMNS) -> bytes:
    return pd.DataFrame(rows, columns=list(columns)).to_csv(index=False).encode()


def good_row(**overrides) -> dict[str, str]:
    return {**GOOD, **overrides}


@pytest.mark.parametrize(("reason", "overrides"), BAD_ROWS, ids=[f"{r.value}-{i}" for i, (r, _) in enumerate(BAD_ROWS)])
def test_each_bad_row_is_quarantined_with_its_reason(reason, overrides):
    raw = read_raw_file("f.csv", csv_bytes([good_row(), good_row(**{"order_number": "1002", **overrides})]))
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
    reformatted = read_raw_file("b.csv", csv_bytes([good_row(courier_lat="50.44520", courier_location_timestamp="2026-10-05T18:04:05.000001+00:00")]))
    result = validate_pings(pd.concat([first, redelivered, reformatted], ignore_index=True), DEFAULT_CITY, DAY)
    assert len(result.clean) == 2
    assert set(result.clean["source_file"]) == {"a.csv"}
    assert result.reason_counts()["duplicate"] == 3


def test_clean_rows_are_typed_to_the_contract():
    result = validate_pings(read_raw_file("f.csv", csv_bytes([good_row()])), DEFAULT_CITY, DAY)
    assert schema_problems(result.clean) == []
    assert result.clean["courier_location_timestamp"].iloc[0] == pd.Timestamp("2026-10-05T18:04:05.000001Z")
    assert result.clean["courier_lat"].iloc[0] == pytest.approx(50.4452)


def test_schema_problems_name_the_column():
    result = validate_pings(read_raw_file("f.csv", csv_bytes([good_row()])), DEFAULT_CITY, DAY)
    broken = result.clean.drop(columns=["courier_id"]).assign(courier_lat=lambda f: f["courier_lat"].astype(str))
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
    with pytest.raises(UnparseableFileError, match=r"raw/dt=2026-10-05/x\.csv: missing required columns \['courier_lat'\]"):
        read_raw_file("raw/dt=2026-10-05/x.csv", content)


def test_binary_garbage_is_a_clear_file_error():
    with pytest.raises(UnparseableFileError, match=r"bad\.parquet: cannot be parsed"):
        read_raw_file("bad.parquet", b"\x00\x01 not parquet")


def test_unparseable_file_is_quarantined_whole_and_counted():
    raw = pd.concat(
        [read_raw_file("ok.csv", csv_bytes([good_row()])), unparseable_file_record("bad.csv", "bad.csv: boom")],
        ignore_index=True,
    )
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) == 1
    record = result.quarantined.iloc[0]
    assert (record["reason"], record["source_file"], record["detail"]) == ("unparseable_file", "bad.csv", "bad.csv: boom")


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
    st.sampled_from(["", "NaN ", "abc", "0", "95", "-104.6189", "50.4452", "104.6", "2026-10-05T18:00:00Z", "x"]),
    st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=6),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({c: cell_values for c in RAW_COLUMNS}), max_size=25), st.integers(0, 5))
def test_rows_in_equal_clean_plus_quarantined(rows, copies):
    rows = rows + [good_row(order_number=str(i)) for i in range(copies)] * 2
    raw = read_raw_file("f.csv", csv_bytes(rows))
    result = validate_pings(raw, DEFAULT_CITY, DAY)
    assert len(result.clean) + len(result.quarantined) == len(raw) == len(rows)
    assert result.quarantined["reason"].isin([r.value for r in QuarantineReason]).all()
    assert set(result.clean["source_row"]).isdisjoint(result.quarantined["source_row"])
    assert list(result.clean.dtypes.astype(str)) == list(CLEAN_DTYPES.values())
    assert np.isfinite(result.clean[["courier_lat", "courier_lon"]].to_numpy()).all()
