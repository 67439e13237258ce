"""Routing an export of every city: every row ends in one city or in the unrouted quarantine."""

import pandas as pd
import pytest

from geo_busyness.core.city import City
from geo_busyness.core.export import route_export, rows_of_city, unrouted_quarantine
from geo_busyness.core.quality import quarantine_verdict
from geo_busyness.core.schema import QuarantineReason, read_landing_file

pytestmark = pytest.mark.unit

REGINA = City()
KOLKATA = City(
    id="kolkata",
    name="Kolkata",
    center_lat=22.5726,
    center_lon=88.3639,
    service_radius_km=5.0,
    timezone="Asia/Kolkata",
    h3_resolution=8,
)
CITIES = (REGINA, KOLKATA)
HEADER = (
    "courier_id,order_number,courier_location_timestamp,courier_lat,courier_lon,"
    "order_created_timestamp,restaurant_lat,restaurant_lon"
)


def _row(lat, lon, ts="2026-11-20T12:00:00Z", order="1", courier="c1") -> str:
    return f"{courier},{order},{ts},{lat},{lon},2026-11-20T11:55:00Z,{lat},{lon}"


def _export(*rows: str) -> pd.DataFrame:
    text = "\n".join([HEADER, *rows]) + "\n"
    read = read_landing_file("raw/dt=2026-11-20/export.csv", text.encode())
    assert read.error is None
    return read.frame


def test_rows_go_to_the_city_whose_service_area_holds_the_courier():
    raw = _export(
        _row(50.45, -104.61),  # regina
        _row(22.57, 88.36, order="2"),  # kolkata
        _row(50.60, -104.61, order="3"),  # 17 km north of regina: outside every area
        _row(-50.45, 104.61, order="4"),  # swapped signs: nobody's
        _row("abc", 88.36, order="5"),  # no position
        _row(22.58, 88.37, order="6", ts="not-a-time"),  # kolkata's, with a bad timestamp
    )
    labels = route_export(raw, CITIES)
    assert labels.tolist()[:2] == [0, 1] and labels[5] == 1
    assert (labels[2:5] < 0).all()
    assert rows_of_city(raw, CITIES, KOLKATA)["order_number"].tolist() == ["2", "6"]

    unrouted = unrouted_quarantine(raw, CITIES, partition_day="2026-11-20")
    reasons = dict(zip(unrouted["order_number"], unrouted["reason"], strict=True))
    assert reasons == {
        "3": QuarantineReason.OUTSIDE_SERVICE_AREA.value,
        "4": QuarantineReason.IMPLAUSIBLE_LOCATION.value,
        "5": QuarantineReason.UNPARSEABLE_NUMBER.value,
    }
    outside = unrouted.loc[unrouted["order_number"] == "3", "detail"].item()
    assert "km from Regina, SK, outside every service area" in outside
    # Every row exactly once: in a city or unrouted.
    taken = sum(len(rows_of_city(raw, CITIES, city)) for city in CITIES)
    assert taken + len(unrouted) == len(raw)


def test_an_unreadable_export_is_unrouted_whole():
    read = read_landing_file("raw/dt=2026-11-20/legacy.csv", b"a,b,c\n1,2,3\n4,5,6\n")
    assert read.error is not None
    unrouted = unrouted_quarantine(read.frame, CITIES)
    assert len(unrouted) == len(read.frame) == 2
    assert set(unrouted["reason"]) == {QuarantineReason.UNPARSEABLE_FILE.value}
    assert (route_export(read.frame, CITIES) < 0).all()


def test_a_mostly_refused_day_names_the_reason_and_the_catalog():
    reasons = pd.Series(["implausible_location"] * 96 + ["duplicate"] * 50)
    verdict = quarantine_verdict(150, reasons, KOLKATA, "cities.yaml", max_share=0.2)
    assert not verdict.passed
    # duplicates count on neither side: 96 of 100 rows
    assert verdict.share == pytest.approx(0.96)
    assert "96% of rows implausible_location for kolkata" in verdict.description
    assert "check the centre of kolkata in the catalog (cities.yaml)" in verdict.description


def test_duplicates_of_a_redelivered_file_do_not_fail_the_day():
    reasons = pd.Series(["duplicate"] * 250 + ["missing_value"] * 10)
    verdict = quarantine_verdict(1000, reasons, REGINA, "cities.yaml", max_share=0.2)
    assert verdict.passed
    assert verdict.share == pytest.approx(10 / 750)
    assert quarantine_verdict(0, pd.Series([], dtype=object), REGINA, "c.yaml").passed
