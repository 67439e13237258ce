"""Which landing days to (re)ingest, decided from a full listing of ``raw/`` and a cursor.

``dagster_aws.s3.sensor.get_objects`` filters on ``since_last_modified`` (strict ``>`` on
one-second timestamps: a second file landing in the same second is missed) or ``since_key``
(raises once that key is deleted), and an overwritten object simply looks new. So each tick
lists the whole prefix and compares it with the cursor instead: one digest per day over the
sorted ``(key, version, modified)`` of its files. A day runs again whenever its digest changes
(new, overwritten or deleted file, late file for an old day), which is exactly once per
version of the day whatever the timing, and the cursor grows by day (~30 bytes), not by file.

Pure logic, no Dagster: the sensor in :mod:`geo_busyness.sensors` lists and logs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

CURSOR_VERSION = 1
# What the ingestion reads, in any letter case: a table, optionally compressed (the content's
# magic bytes decide how it is unpacked; see ``geo_busyness.core.schema``).
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".parquet")
COMPRESSION_EXTENSIONS = (".gz", ".gzip", ".zip", ".bz2", ".xz")
# ``raw/dt=D/<file>`` (one export for every city) or ``raw/city=<id>/dt=D/<file>`` (one city's).
_DAY_FOLDER = re.compile(r"^raw/(?:city=([^/]*)/)?dt=([^/]*)/(.*)$")
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DAY_DIGEST_CHARS = 16  # 64 bits: run keys of one day never collide in practice
IGNORED_KEY_HASH_CHARS = 12  # a collision only hides one log line


class ListedFile(Protocol):
    """What a listing gives per object (``LandingFile`` of the landing-zone resource fits).

    ``version`` is the ETag on S3, ``mtime_ns-size`` locally; ``modified`` is part of the
    digest too, so a file rewritten back to earlier content (same ETag) still counts as new.
    """

    @property
    def key(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def modified(self) -> dt.datetime: ...


@dataclass(frozen=True)
class DayWindow:
    """The partition days: ``first`` to ``last`` (the last complete UTC day), inclusive."""

    first: dt.date
    last: dt.date

    @property
    def day_in_progress(self) -> dt.date:
        return self.last + dt.timedelta(days=1)


@dataclass(frozen=True)
class IgnoredKey:
    key: str
    reason: str


@dataclass(frozen=True)
class DayRun:
    """One day to ingest; ``run_key`` names this version of the day, so Dagster launches it once
    even if the cursor that recorded it were lost."""

    day: str
    digest: str
    files: int
    is_new_day: bool
    city: str | None = None
    """The city of a ``raw/city=<id>/`` folder; None for an export of every city."""

    @property
    def slot(self) -> str:
        """``<city>/<day>`` for a city's folder, ``<day>`` for the export of every city."""
        return landing_slot(self.city, self.day)

    @property
    def run_key(self) -> str:
        return f"{self.slot}:{self.digest}"


def landing_slot(city: str | None, day: str) -> str:
    return f"{city}/{day}" if city else day


@dataclass(frozen=True)
class LandingPlan:
    runs: tuple[DayRun, ...]
    cursor: str
    emptied_days: tuple[str, ...]
    """Days the previous cursor knew that have no ingestible file left (reported once)."""
    newly_ignored: tuple[IgnoredKey, ...]
    """Ignored keys not reported by an earlier tick."""
    ignored_count: int
    pending_files: int
    """Files of the day in progress: they are ingested once that day is complete."""
    files: int
    days: int
    cursor_problem: str | None
    """Why the previous cursor was discarded, if it was."""
    digests: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Digest of every landing slot (:func:`landing_slot`) now, changed or not."""

    def summary(self) -> str:
        """What the listing held, in one line for the sensor's messages."""
        parts = [f"{self.files} file(s) in {self.days} day(s)"]
        if self.pending_files:
            parts.append(f"{self.pending_files} file(s) wait for the day in progress to end")
        if self.ignored_count:
            parts.append(f"{self.ignored_count} key(s) ignored")
        if self.emptied_days:
            parts.append(f"{len(self.emptied_days)} day(s) emptied")
        return "; ".join(parts)


def file_name_problem(name: str) -> str | None:
    """Why a file name directly in a day folder is not one the ingestion reads, or None.

    Readable: ``<name>.csv``, ``.tsv`` or ``.parquet``, optionally followed by ``.gz``,
    ``.gzip``, ``.zip``, ``.bz2`` or ``.xz``, in any letter case (``.CSV``, ``.csv.GZ``).
    """
    lower = PurePosixPath(name.lower())
    table = PurePosixPath(lower.stem) if lower.suffix in COMPRESSION_EXTENSIONS else lower
    if table.suffix in SUPPORTED_EXTENSIONS:
        return None
    original = PurePosixPath(name)
    shown = "".join(original.suffixes[-2:]) if table is not lower else original.suffix
    return (
        f"extension {shown or '(none)'!r} is not one of {', '.join(SUPPORTED_EXTENSIONS)} "
        f"(any letter case, optionally compressed: {', '.join(COMPRESSION_EXTENSIONS)})"
    )


def day_folder_problem(rest: str) -> str | None:
    """Why ``rest``, a key relative to its day folder, is not a file the ingestion reads."""
    if not rest:
        return "folder marker, not a file"
    if "/" in rest:
        return "in a subfolder of the day folder (only files directly in it are read)"
    return file_name_problem(rest)


def ignore_reason(
    key: str, window: DayWindow, city_ids: Collection[str] | None = None
) -> str | None:
    """Why ``key`` is not an ingestible file of a partition day, or None when it is one.

    Accepts exactly what the ``raw_courier_pings`` assets read (``city_day_of_key`` of the
    resource): ``raw/dt=YYYY-MM-DD/<name>`` or ``raw/city=<id>/dt=YYYY-MM-DD/<name>`` (``<id>``
    one of ``city_ids`` when given) with a readable name (:func:`file_name_problem`), directly
    in the day folder.
    """
    match = _DAY_FOLDER.match(key)
    if not match:
        return "not in a raw/dt=YYYY-MM-DD/ or raw/city=<id>/dt=YYYY-MM-DD/ folder"
    city, day_text, name = match.groups()
    if city is not None and city_ids is not None and city not in city_ids:
        known = ", ".join(sorted(city_ids)) or "none"
        return f"city={city} is not a city of the catalog (known: {known})"
    if not _ISO_DAY.match(day_text):
        return f"folder dt={day_text} is not a YYYY-MM-DD day"
    try:
        day = dt.date.fromisoformat(day_text)
    except ValueError:
        return f"folder dt={day_text} is not a calendar day"
    problem = day_folder_problem(name)
    if problem is not None:
        return problem
    if day < window.first:
        return (
            f"day before the first partition {window.first} (lower a city's first_day in the "
            "catalog, or reload the code location to take days older than the oldest landed one)"
        )
    if day > window.day_in_progress:
        return f"day in the future (today is {window.day_in_progress} UTC)"
    return None


def day_digest(files: Iterable[ListedFile]) -> str:
    """Changes whenever a file of the day is added, removed, overwritten or touched."""
    lines = sorted(f"{f.key}\t{f.version}\t{f.modified.isoformat()}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:DAY_DIGEST_CHARS]


def _ignored_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:IGNORED_KEY_HASH_CHARS]


@dataclass(frozen=True)
class _Cursor:
    days: Mapping[str, str]
    ignored: frozenset[str]

    def dumps(self) -> str:
        return json.dumps(
            {"v": CURSOR_VERSION, "days": dict(self.days), "ignored": sorted(self.ignored)},
            separators=(",", ":"),
        )


_EMPTY_CURSOR = _Cursor(days={}, ignored=frozenset())


def _load_cursor(cursor: str | None) -> tuple[_Cursor, str | None]:
    """The cursor and, when it cannot be used, why (it is then treated as empty)."""
    if not cursor:
        return _EMPTY_CURSOR, None
    try:
        data = json.loads(cursor)
    except json.JSONDecodeError as error:
        return _EMPTY_CURSOR, f"not JSON ({error})"
    if not isinstance(data, dict):
        return _EMPTY_CURSOR, f"a JSON {type(data).__name__}, not an object"
    if data.get("v") != CURSOR_VERSION:
        return _EMPTY_CURSOR, f"format version {data.get('v')!r}, expected {CURSOR_VERSION}"
    days, ignored = data.get("days"), data.get("ignored")
    if not (
        isinstance(days, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in days.items())
        and isinstance(ignored, list)
        and all(isinstance(h, str) for h in ignored)
    ):
        return _EMPTY_CURSOR, "'days' must map day to digest and 'ignored' be a list of hashes"
    return _Cursor(days=days, ignored=frozenset(ignored)), None


def plan_landing_runs(
    listing: Iterable[ListedFile],
    cursor: str | None,
    window: DayWindow,
    city_ids: Collection[str] | None = None,
) -> LandingPlan:
    """The days whose files changed since ``cursor`` (oldest first) and the cursor to store.

    A cursor that cannot be read is treated as empty: every day is requested again, and
    Dagster launches none that already ran because run keys derive from the days' content.
    Days left without any ingestible file get no run (it would fail on no input); their last
    materialization stays as it is.
    """
    previous, cursor_problem = _load_cursor(cursor)
    files_by_slot: dict[tuple[str, str | None], list[ListedFile]] = {}
    ignored: list[IgnoredKey] = []
    pending_files = 0
    day_in_progress = window.day_in_progress.isoformat()
    for listed in listing:
        reason = ignore_reason(listed.key, window, city_ids)
        if reason is not None:
            ignored.append(IgnoredKey(listed.key, reason))
            continue
        city, day, _ = _DAY_FOLDER.match(listed.key).groups()
        if day == day_in_progress:
            pending_files += 1
        else:
            files_by_slot.setdefault((day, city), []).append(listed)

    slots = sorted(files_by_slot, key=lambda slot: (slot[0], slot[1] or ""))
    digests = {landing_slot(city, day): day_digest(files_by_slot[day, city]) for day, city in slots}
    runs = tuple(
        DayRun(
            day=day,
            digest=digests[landing_slot(city, day)],
            files=len(files_by_slot[day, city]),
            is_new_day=landing_slot(city, day) not in previous.days,
            city=city,
        )
        for day, city in slots
        if previous.days.get(landing_slot(city, day)) != digests[landing_slot(city, day)]
    )
    ignored_hashes = {_ignored_key_hash(item.key): item for item in ignored}
    return LandingPlan(
        runs=runs,
        cursor=_Cursor(days=digests, ignored=frozenset(ignored_hashes)).dumps(),
        emptied_days=tuple(sorted(set(previous.days) - set(digests))),
        newly_ignored=tuple(
            item for key_hash, item in ignored_hashes.items() if key_hash not in previous.ignored
        ),
        ignored_count=len(ignored),
        pending_files=pending_files,
        files=sum(len(files) for files in files_by_slot.values()),
        days=len({day for day, _ in slots}),
        cursor_problem=cursor_problem,
        digests=digests,
    )


def city_day_digest(plan: LandingPlan, city: str, day: str) -> str | None:
    """Digest of what ``city`` reads for ``day``: its own folder and the export of every city
    (None when neither holds a file)."""
    parts = [plan.digests.get(landing_slot(city, day)), plan.digests.get(day)]
    if parts == [None, None]:
        return None
    return hashlib.sha256("|".join(p or "" for p in parts).encode()).hexdigest()[:DAY_DIGEST_CHARS]
