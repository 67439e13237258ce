import datetime as dt
import gzip
import json

import dagster as dg
import pytest

from geo_busyness.assets.ingestion import build_ingestion, build_unrouted
from geo_busyness.core.city import DEFAULT_CITY as DEFAULT_CITY_FOR_TESTS
from geo_busyness.core.landing import (
    DayWindow,
    LandingPlan,
    city_day_digest,
    ignore_reason,
    plan_landing_runs,
)
from geo_busyness.core.schema import RAW_COLUMNS, validate_pings
from geo_busyness.resources.landing_zone import (
    LandingFile,
    LandingZone,
    city_day_of_key,
    day_of_key,
    day_prefix,
)

pytestmark = pytest.mark.unit

WINDOW = DayWindow(first=dt.date(2025, 1, 1), last=dt.date(2025, 3, 31))
NOON = dt.datetime(2025, 4, 1, 12, 0, 0, tzinfo=dt.UTC)
CITY_IDS = ("regina", "new-york")
NOT_IN_LAYOUT = "not in a raw/dt=YYYY-MM-DD/ or raw/city=<id>/dt=YYYY-MM-DD/ folder"
# The raw pings asset of the packaged single-city catalog (Regina), called directly.
raw_courier_pings, _ = build_ingestion(DEFAULT_CITY_FOR_TESTS, (DEFAULT_CITY_FOR_TESTS,))


def ingest(asset, context, zone):
    """A raw-pings asset invoked directly: its rows, or None when it materializes nothing."""
    outputs = list(asset(context, zone))
    return outputs[0].value if outputs else None


def listed(key: str, etag: str = "e1", modified: dt.datetime = NOON) -> LandingFile:
    return LandingFile(key=key, size=10, modified=modified, version=etag)


def tick(
    listing: list[LandingFile],
    cursor: str | None,
    window: DayWindow = WINDOW,
    city_ids: tuple[str, ...] | None = None,
) -> LandingPlan:
    return plan_landing_runs(listing, cursor, window, city_ids)


def run_days(plan: LandingPlan) -> list[str]:
    return [run.day for run in plan.runs]


def test_first_tick_requests_every_complete_day_oldest_first():
    listing = [
        listed("raw/dt=2025-03-02/a.csv"),
        listed("raw/dt=2025-01-05/a.parquet"),
        listed("raw/dt=2025-01-05/b.csv"),
    ]
    plan = tick(listing, None)
    assert run_days(plan) == ["2025-01-05", "2025-03-02"]
    assert [run.files for run in plan.runs] == [2, 1]
    assert all(run.is_new_day for run in plan.runs)
    assert plan.runs[0].run_key == f"2025-01-05:{plan.runs[0].digest}"
    assert (plan.files, plan.days, plan.cursor_problem) == (3, 2, None)
    assert json.loads(plan.cursor)["v"] == 1


def test_restart_with_the_stored_cursor_requests_nothing_new():
    listing = [listed("raw/dt=2025-01-05/a.csv"), listed("raw/dt=2025-01-06/a.csv")]
    stored = tick(listing, None).cursor
    after_restart = tick(list(reversed(listing)), stored)
    assert after_restart.runs == ()
    assert after_restart.cursor == stored


def test_second_file_in_the_same_second_reruns_the_day():
    first = [listed("raw/dt=2025-01-05/a.csv", modified=NOON)]
    cursor = tick(first, None).cursor
    plan = tick([*first, listed("raw/dt=2025-01-05/b.csv", modified=NOON)], cursor)
    assert run_days(plan) == ["2025-01-05"]
    assert not plan.runs[0].is_new_day
    assert plan.runs[0].files == 2


def test_overwrite_with_a_new_etag_in_the_same_second_reruns_the_day():
    cursor = tick([listed("raw/dt=2025-01-05/a.csv", etag="e1")], None).cursor
    plan = tick([listed("raw/dt=2025-01-05/a.csv", etag="e2")], cursor)
    assert run_days(plan) == ["2025-01-05"]


def test_content_restored_after_an_overwrite_gets_a_new_run_key():
    key = "raw/dt=2025-01-05/a.csv"
    original = tick([listed(key, "e1", NOON)], None)
    overwritten = tick([listed(key, "e2", NOON + dt.timedelta(seconds=5))], original.cursor)
    restored = tick([listed(key, "e1", NOON + dt.timedelta(seconds=9))], overwritten.cursor)
    run_keys = [plan.runs[0].run_key for plan in (original, overwritten, restored)]
    assert len(set(run_keys)) == 3


@pytest.mark.parametrize("deleted", ["raw/dt=2025-01-05/a.csv", "raw/dt=2025-01-05/z.csv"])
def test_deleting_one_file_reruns_its_day_only(deleted):
    # z.csv is both the last key and the last modified: what `since_key` would point at.
    listing = [
        listed("raw/dt=2025-01-05/a.csv", modified=NOON),
        listed("raw/dt=2025-01-05/z.csv", modified=NOON + dt.timedelta(minutes=1)),
        listed("raw/dt=2025-01-06/a.csv"),
    ]
    cursor = tick(listing, None).cursor
    plan = tick([f for f in listing if f.key != deleted], cursor)
    assert run_days(plan) == ["2025-01-05"]
    assert plan.runs[0].files == 1
    assert plan.emptied_days == ()


def test_day_whose_files_are_all_deleted_gets_no_run_and_is_reported_once():
    kept = listed("raw/dt=2025-01-06/a.csv")
    gone = listed("raw/dt=2025-01-05/a.csv")
    cursor = tick([gone, kept], None).cursor
    emptied = tick([kept], cursor)
    assert emptied.runs == ()
    assert emptied.emptied_days == ("2025-01-05",)
    later = tick([kept], emptied.cursor)
    assert later.emptied_days == ()
    assert run_days(tick([gone, kept], later.cursor)) == ["2025-01-05"]


def test_late_file_for_an_old_day_reruns_that_day_only():
    listing = [listed(f"raw/dt=2025-01-{day:02d}/a.csv") for day in range(1, 31)]
    cursor = tick(listing, None).cursor
    late = listed("raw/dt=2025-01-02/late.csv", modified=NOON + dt.timedelta(days=20))
    assert run_days(tick([*listing, late], cursor)) == ["2025-01-02"]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("raw/readme.txt", NOT_IN_LAYOUT),
        ("raw/2025-01-05/a.csv", NOT_IN_LAYOUT),
        ("raw/dt=20250105/a.csv", "folder dt=20250105 is not a YYYY-MM-DD day"),
        ("raw/dt=2025-02-30/a.csv", "folder dt=2025-02-30 is not a calendar day"),
        ("raw/dt=2025-01-05/", "folder marker, not a file"),
        ("raw/dt=2025-01-05/late/a.csv", "in a subfolder of the day folder"),
        ("raw/dt=2025-01-05/a.json", "extension '.json' is not one of .csv, .tsv, .parquet"),
        ("raw/dt=2025-01-05/a.json.gz", "extension '.json.gz' is not one of .csv, .tsv, .parquet"),
        ("raw/dt=2025-01-05/a.gz", "extension '.gz' is not one of .csv, .tsv, .parquet"),
        ("raw/dt=2025-01-05/a.xlsx", "extension '.xlsx' is not one of .csv, .tsv, .parquet"),
        ("raw/dt=2025-01-05/README", "extension '(none)' is not one of .csv, .tsv, .parquet"),
        ("raw/dt=2024-12-31/a.csv", "day before the first partition 2025-01-01"),
        ("raw/dt=2025-04-02/a.csv", "day in the future (today is 2025-04-01 UTC)"),
    ],
)
def test_ignored_keys_come_with_their_reason(key, reason):
    plan = tick([listed(key), listed("raw/dt=2025-01-05/a.csv")], None)
    assert run_days(plan) == ["2025-01-05"]
    assert [item.key for item in plan.newly_ignored] == [key]
    assert plan.newly_ignored[0].reason.startswith(reason)
    assert plan.ignored_count == 1


def test_ignored_keys_are_reported_once_and_new_ones_alone():
    junk = listed("raw/dt=2025-01-05/notes.txt")
    cursor = tick([junk], None).cursor
    again = tick([junk], cursor)
    assert (again.newly_ignored, again.ignored_count) == ((), 1)
    more_junk = listed("raw/dt=2025-01-05/more.txt")
    plan = tick([junk, more_junk], again.cursor)
    assert [item.key for item in plan.newly_ignored] == [more_junk.key]
    assert plan.ignored_count == 2


def test_files_of_the_day_in_progress_wait_and_run_once_it_is_complete():
    today = listed("raw/dt=2025-04-01/a.csv")
    plan = tick([today], None)
    assert (plan.runs, plan.newly_ignored, plan.pending_files) == ((), (), 1)
    next_day = DayWindow(first=WINDOW.first, last=dt.date(2025, 4, 1))
    assert run_days(tick([today], plan.cursor, next_day)) == ["2025-04-01"]


@pytest.mark.parametrize(
    ("cursor", "problem"),
    [
        ("2025-01-05T00:00:00", "not JSON"),
        ('["2025-01-05"]', "a JSON list, not an object"),
        ("1738368000", "a JSON int, not an object"),
        ('{"days": {}}', "format version None, expected 1"),
        ('{"v": 2, "days": {}, "ignored": []}', "format version 2, expected 1"),
        ('{"v": 1, "days": ["2025-01-05"], "ignored": []}', "'days' must map day to digest"),
        ('{"v": 1, "days": {"2025-01-05": 7}, "ignored": []}', "'days' must map day to digest"),
        ('{"v": 1, "days": {}}', "'ignored' be a list of hashes"),
    ],
)
def test_unreadable_cursor_starts_over_with_the_same_run_keys(cursor, problem):
    listing = [listed("raw/dt=2025-01-05/a.csv"), listed("raw/dt=2025-01-06/a.csv")]
    fresh = tick(listing, None)
    plan = tick(listing, cursor)
    assert problem in plan.cursor_problem
    assert [run.run_key for run in plan.runs] == [run.run_key for run in fresh.runs]
    assert plan.cursor == fresh.cursor


def test_cursor_grows_per_day_not_per_file():
    year = DayWindow(first=dt.date(2025, 1, 1), last=dt.date(2025, 12, 31))
    days = [year.first + dt.timedelta(days=offset) for offset in range(365)]
    listing = [
        listed(f"raw/dt={day}/courier-{n:03d}.csv", etag=f"{day}-{n}")
        for day in days
        for n in range(90)
    ]
    assert len(listing) > 30_000
    plan = tick(listing, None, year)
    assert len(plan.runs) == 365
    assert len(plan.cursor) < 365 * 40
    listing[-1] = listed(listing[-1].key, etag="rewritten")
    assert run_days(tick(listing, plan.cursor, year)) == ["2025-12-31"]


@pytest.mark.parametrize(
    "key",
    [
        "raw/dt=2025-01-05/a.csv",
        "raw/dt=2025-01-05/a.b.parquet",
        "raw/dt=2025-01-05/.hidden.csv",
        "raw/dt=2025-01-05/.csv",
        "raw/dt=2025-01-05/a.csv.gz",
        "raw/dt=2025-01-05/a.PARQUET",
        "raw/dt=2025-01-05/a.CSV",
        "raw/dt=2025-01-05/a.tsv",
        "raw/dt=2025-01-05/a.TSV.GZ",
        "raw/dt=2025-01-05/a.csv.zip",
        "raw/dt=2025-01-05/a.csv.bz2",
        "raw/dt=2025-01-05/a.json.gz",
        "raw/dt=2025-01-05/a.gz",
        "raw/dt=2025-01-05/.csv.gz",
        "raw/dt=2025-01-05/a.txt",
        "raw/dt=2025-01-05/sub/a.csv",
        "raw/dt=2025-1-05/a.csv",
        "raw/dt=2025-13-05/a.csv",
        "raw/dt=2025-01-05a/a.csv",
        "raw/x/dt=2025-01-05/a.csv",
        "landing/raw/dt=2025-01-05/a.csv",
        "raw/city=regina/dt=2025-01-05/a.csv",
        "raw/city=new-york/dt=2025-01-05/a.CSV.GZ",
        "raw/city=regina/dt=2025-01-05/a.txt",
        "raw/city=regina/dt=2025-01-05/sub/a.csv",
        "raw/city=regina/dt=2025-13-05/a.csv",
        "raw/city=regina/a.csv",
        "raw/city=paris/dt=2025-01-05/a.csv",
        "raw/city=Regina/dt=2025-01-05/a.csv",
        "raw/city=/dt=2025-01-05/a.csv",
        "raw/city=regina/city=regina/dt=2025-01-05/a.csv",
        "raw/dt=2025-01-05/city=regina/a.csv",
    ],
)
def test_accepts_exactly_the_keys_the_ingestion_asset_reads(key):
    """The sensor (which knows the catalog's ids) accepts a key exactly when a city's raw pings
    asset reads it: its own folder, or the export of every city."""
    found = city_day_of_key(key)
    read = found is not None and (found[0] is None or found[0] in CITY_IDS)
    assert (ignore_reason(key, WINDOW, CITY_IDS) is None) == read
    # Without a catalog, the export of every city is still what `day_of_key` reads.
    if not key.startswith("raw/city="):
        assert (ignore_reason(key, WINDOW) is None) == (day_of_key(key) is not None)


EXPORT_NAMES = ["a.csv.gz", "b.tsv", "c.CSV", "d.Parquet", "e.csv.zip", "f.TSV.GZ", "g.csv.xz"]


@pytest.mark.parametrize("name", EXPORT_NAMES)
def test_export_files_of_any_case_and_compression_are_ingested(name):
    key = f"raw/dt=2025-01-05/{name}"
    plan = tick([listed(key)], None)
    assert run_days(plan) == ["2025-01-05"]
    assert (plan.files, plan.ignored_count) == (1, 0)
    assert day_of_key(key) == "2025-01-05"


HEADER = ",".join(RAW_COLUMNS) + "\n"
ROW = "c{i},{i},2026-10-05T18:04:05Z,50.4452,-104.6189,2026-10-05T17:55:00Z,50.4460,-104.6170\n"


def rows_text(count: int, start: int = 0) -> str:
    return HEADER + "".join(ROW.format(i=start + i) for i in range(count))


@pytest.mark.parametrize("folder", ["raw/city=regina", "raw"], ids=["city-folder", "export"])
def test_every_file_seen_under_the_day_folder_is_recorded(tmp_path, folder):
    """Files that were not read (and left no trace) are read now, and what still cannot be read
    is listed with the reason; rows in the raw table are the source rows of the files read.

    In the city's own folder every source row is the city's; in the export of every city the
    rows of a file without coordinates (legacy header) route to no city: they are quarantined
    in ``unrouted_pings`` instead, so every row is still accounted for once."""
    zone = LandingZone(root=str(tmp_path))
    day = "2026-10-05"
    files = {
        "a.csv.gz": gzip.compress(rows_text(3).encode()),
        "b.tsv": rows_text(2, 10).replace(",", "\t").encode(),
        "c.CSV": rows_text(4, 20).encode(),
        "legacy.csv": rows_text(5, 30).replace("courier_lat", "lat").encode(),
        "notes.txt": b"not data",
        "late/d.csv": rows_text(1, 40).encode(),
    }
    for name, content in files.items():
        zone.write(f"{folder}/dt={day}/{name}", content)
    with dg.build_asset_context(partition_key=day) as context:
        raw = ingest(raw_courier_pings, context, zone)
        metadata = context.get_output_metadata("result")
    seen = {record["key"].rsplit(f"dt={day}/", 1)[1]: record for record in metadata["files"].data}
    assert set(seen) == set(files)
    assert {name: seen[name]["rows"] for name in seen} == {
        "a.csv.gz": 3,
        "b.tsv": 2,
        "c.CSV": 4,
        "legacy.csv": 5,
        "notes.txt": None,
        "late/d.csv": None,
    }
    assert seen["a.csv.gz"]["compression"] == "gzip" and seen["b.tsv"]["delimiter"] == "tab"
    assert seen["legacy.csv"]["quarantined_whole"] and "missing" in seen["legacy.csv"]["error"]
    assert not seen["notes.txt"]["read"] and "'.txt' is not one of" in seen["notes.txt"]["not_read"]
    assert "subfolder" in seen["late/d.csv"]["not_read"]
    # The separate `files_not_read` entry is gone: the records say what was not read.
    assert {record["key"] for record in metadata["files"].data if not record["read"]} == {
        f"{folder}/dt={day}/notes.txt",
        f"{folder}/dt={day}/late/d.csv",
    }
    result = validate_pings(raw, DEFAULT_CITY_FOR_TESTS, day)
    assert len(result.clean) == 9
    if folder != "raw":
        assert metadata["source_rows"] == len(raw) == 14
        assert result.reason_counts()["unparseable_file"] == 5
        return
    assert metadata["source_rows"] == len(raw) == metadata["export_rows_taken"] == 9
    assert {seen[name]["rows_of_city"] for name in ("a.csv.gz", "b.tsv", "c.CSV")} == {3, 2, 4}
    assert seen["legacy.csv"]["rows_of_city"] == 0
    unrouted = build_unrouted((DEFAULT_CITY_FOR_TESTS,))
    with dg.build_asset_context(partition_key=day) as context:
        table = unrouted(context, zone)
        unrouted_metadata = context.get_output_metadata("result")
    assert len(table) == unrouted_metadata["unrouted_rows"] == 5
    assert unrouted_metadata["export_rows"] == 14
    assert set(table["source_file"]) == {f"raw/dt={day}/legacy.csv"}
    assert set(table["reason"]) == {"unparseable_file"}


def test_a_day_with_only_unreadable_files_fails_naming_them(tmp_path):
    zone = LandingZone(root=str(tmp_path))
    zone.write("raw/dt=2026-10-05/export.xlsx", b"PK")
    expected = r"No landing files .*export\.xlsx.*'\.xlsx' is not one"
    with (
        dg.build_asset_context(partition_key="2026-10-05") as context,
        pytest.raises(dg.Failure, match=expected),
    ):
        ingest(raw_courier_pings, context, zone)


# --- multi-city layout: raw/city=<id>/dt=D/ (one city's) and raw/dt=D/ (every city's) -------


def test_city_folder_and_export_of_every_city_are_separate_slots():
    listing = [
        listed("raw/city=regina/dt=2025-01-05/a.csv"),
        listed("raw/city=regina/dt=2025-01-05/b.csv"),
        listed("raw/city=new-york/dt=2025-01-05/a.csv"),
        listed("raw/dt=2025-01-05/a.csv"),
        listed("raw/city=new-york/dt=2025-01-04/a.csv"),
    ]
    plan = tick(listing, None, city_ids=CITY_IDS)
    assert [(run.day, run.city, run.files) for run in plan.runs] == [
        ("2025-01-04", "new-york", 1),
        ("2025-01-05", None, 1),
        ("2025-01-05", "new-york", 1),
        ("2025-01-05", "regina", 2),
    ]
    assert [run.slot for run in plan.runs] == [
        "new-york/2025-01-04",
        "2025-01-05",
        "new-york/2025-01-05",
        "regina/2025-01-05",
    ]
    for run in plan.runs:
        assert run.run_key == f"{run.slot}:{run.digest}"
        assert plan.digests[run.slot] == run.digest
    assert len({run.run_key for run in plan.runs}) == 4
    assert (plan.files, plan.days, plan.ignored_count) == (5, 2, 0)
    assert set(json.loads(plan.cursor)["days"]) == {run.slot for run in plan.runs}


def test_unknown_city_folder_is_ignored_with_its_reason():
    unknown = listed("raw/city=paris/dt=2025-01-05/a.csv")
    plan = tick([unknown, listed("raw/city=regina/dt=2025-01-05/a.csv")], None, city_ids=CITY_IDS)
    assert [run.slot for run in plan.runs] == ["regina/2025-01-05"]
    assert [(item.key, item.reason) for item in plan.newly_ignored] == [
        (unknown.key, "city=paris is not a city of the catalog (known: new-york, regina)")
    ]
    assert plan.ignored_count == 1
    assert tick([unknown], plan.cursor, city_ids=CITY_IDS).newly_ignored == ()


def test_city_folder_outside_the_layout_is_ignored_with_its_reason():
    keys = {
        "raw/city=regina/a.csv": NOT_IN_LAYOUT,
        "raw/city=regina/dt=2025-02-30/a.csv": "folder dt=2025-02-30 is not a calendar day",
        "raw/city=regina/dt=2025-01-05/late/a.csv": "in a subfolder of the day folder",
        "raw/city=regina/dt=2025-01-05/a.json": "extension '.json' is not one of",
        "raw/city=regina/dt=2024-12-31/a.csv": "day before the first partition 2025-01-01",
        "raw/city=Regina/dt=2025-01-05/a.csv": "city=Regina is not a city of the catalog",
    }
    plan = tick([listed(key) for key in keys], None, city_ids=CITY_IDS)
    assert plan.runs == ()
    reasons = {item.key: item.reason for item in plan.newly_ignored}
    assert set(reasons) == set(keys)
    for key, reason in keys.items():
        assert reasons[key].startswith(reason), key


def test_city_folder_change_reruns_that_city_only():
    listing = [
        listed("raw/city=regina/dt=2025-01-05/a.csv"),
        listed("raw/city=new-york/dt=2025-01-05/a.csv"),
        listed("raw/dt=2025-01-05/a.csv"),
    ]
    first = tick(listing, None, city_ids=CITY_IDS)
    listing[1] = listed(listing[1].key, etag="e2")
    plan = tick(listing, first.cursor, city_ids=CITY_IDS)
    assert [(run.day, run.city) for run in plan.runs] == [("2025-01-05", "new-york")]
    assert not plan.runs[0].is_new_day
    # Regina's reading of the day (its folder and the export) did not change, New York's did.
    assert city_day_digest(plan, "regina", "2025-01-05") == city_day_digest(
        first, "regina", "2025-01-05"
    )
    assert city_day_digest(plan, "new-york", "2025-01-05") != city_day_digest(
        first, "new-york", "2025-01-05"
    )


def test_export_of_every_city_change_reruns_the_export_slot_and_every_city_reading():
    listing = [
        listed("raw/city=regina/dt=2025-01-05/a.csv"),
        listed("raw/dt=2025-01-05/a.csv"),
    ]
    first = tick(listing, None, city_ids=CITY_IDS)
    listing.append(listed("raw/dt=2025-01-05/b.csv"))
    plan = tick(listing, first.cursor, city_ids=CITY_IDS)
    assert [(run.day, run.city, run.files) for run in plan.runs] == [("2025-01-05", None, 2)]
    for city in CITY_IDS:
        assert city_day_digest(plan, city, "2025-01-05") != city_day_digest(
            first, city, "2025-01-05"
        )
    # A city with neither folder nor export for the day reads nothing.
    assert city_day_digest(plan, "regina", "2025-01-06") is None


def test_emptied_city_folder_is_reported_by_its_slot():
    kept = listed("raw/dt=2025-01-05/a.csv")
    gone = listed("raw/city=new-york/dt=2025-01-05/a.csv")
    cursor = tick([kept, gone], None, city_ids=CITY_IDS).cursor
    emptied = tick([kept], cursor, city_ids=CITY_IDS)
    assert (emptied.runs, emptied.emptied_days) == ((), ("new-york/2025-01-05",))


@pytest.mark.parametrize(
    ("key", "found"),
    [
        ("raw/dt=2025-01-05/a.csv", (None, "2025-01-05")),
        ("raw/city=regina/dt=2025-01-05/a.csv", ("regina", "2025-01-05")),
        ("raw/city=new-york/dt=2025-01-05/a.parquet.gz", ("new-york", "2025-01-05")),
        ("raw/city=regina/dt=2025-01-05/a.txt", None),
        ("raw/city=regina/dt=2025-02-30/a.csv", None),
        ("raw/city=regina/dt=2025-01-05/sub/a.csv", None),
        ("raw/city=New-York/dt=2025-01-05/a.csv", None),
    ],
)
def test_city_and_day_of_a_key(key, found):
    assert city_day_of_key(key) == found
    assert day_of_key(key) == (found[1] if found and found[0] is None else None)


def test_day_prefix_of_a_city_and_of_the_export_of_every_city():
    assert day_prefix("2025-01-05") == "raw/dt=2025-01-05/"
    assert day_prefix("2025-01-05", "new-york") == "raw/city=new-york/dt=2025-01-05/"
    zone_keys = ["raw/city=new-york/dt=2025-01-05/a.csv", "raw/dt=2025-01-05/a.csv"]
    for key in zone_keys:
        city, day = city_day_of_key(key)
        assert key.startswith(day_prefix(day, city))


def test_raw_pings_of_a_city_are_its_folder_and_its_rows_of_the_export(tmp_path):
    """Regina's raw pings: every row of `raw/city=regina/dt=D/` (in its area or not: validation
    refuses the strays) and exactly the rows of the export of every city inside its area."""
    from geo_busyness.simulate import MULTI_CITIES

    cities = tuple(MULTI_CITIES)
    regina = next(city for city in cities if city.id == "regina")
    new_york = next(city for city in cities if city.id == "new-york")
    raw_of_regina, _ = build_ingestion(regina, cities)
    zone = LandingZone(root=str(tmp_path))
    day = "2026-10-05"
    ny_row = ROW.replace("50.4452,-104.6189", f"{new_york.center_lat},{new_york.center_lon}")
    stray = ROW.replace("50.4452,-104.6189", "50.9,-104.6189")  # ~50 km north of Regina
    export = HEADER + "".join(
        row.format(i=i) for i, row in enumerate([ROW, ny_row, stray, ROW, ny_row])
    )
    zone.write(f"raw/dt={day}/export.csv", export.encode())
    zone.write(f"raw/city=regina/dt={day}/own.csv", rows_text(3, 100).encode())
    zone.write(f"raw/city=new-york/dt={day}/theirs.csv", rows_text(7, 200).encode())
    with dg.build_asset_context(partition_key=day) as context:
        raw = ingest(raw_of_regina, context, zone)
        metadata = context.get_output_metadata("result")
    by_file = raw.groupby("source_file").size().to_dict()
    assert by_file == {f"raw/city=regina/dt={day}/own.csv": 3, f"raw/dt={day}/export.csv": 2}
    assert metadata["source_rows"] == len(raw) == 5
    assert metadata["export_rows_taken"] == 2
    records = {record["key"]: record for record in metadata["files"].data}
    assert set(records) == {f"raw/city=regina/dt={day}/own.csv", f"raw/dt={day}/export.csv"}
    assert records[f"raw/dt={day}/export.csv"]["rows_of_city"] == 2


def test_a_city_day_without_files_fails_naming_both_folders(tmp_path):
    zone = LandingZone(root=str(tmp_path))
    zone.write("raw/city=new-york/dt=2026-10-05/a.csv", rows_text(1).encode())
    with (
        dg.build_asset_context(partition_key="2026-10-05") as context,
        pytest.raises(dg.Failure) as failure,
    ):
        ingest(raw_courier_pings, context, zone)
    message = failure.value.description
    assert "raw/city=regina/dt=2026-10-05/" in message and "raw/dt=2026-10-05/" in message
