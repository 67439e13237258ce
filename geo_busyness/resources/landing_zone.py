"""The landing zone: where raw ping files arrive, a local directory or an S3 prefix.

Files are laid out as ``raw/city=<id>/dt=YYYY-MM-DD/<name>.csv|.tsv|.parquet`` (one city's) or
``raw/dt=YYYY-MM-DD/<name>`` (one export for every city, routed row by row), in any letter case,
optionally compressed (``.gz``, ``.zip``, ...; see ``geo_busyness.core.landing.file_name_problem``),
under the zone's root.
S3 goes through dagster-aws's ``S3Resource`` so credentials and endpoints are configured the
Dagster way (any S3-compatible endpoint through ``endpoint_url``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from geo_busyness.core.landing import file_name_problem
from geo_busyness.resources.settings import default_data_dir

RAW_PREFIX = "raw"
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DAY_KEY = re.compile(r"^raw/(?:city=([a-z0-9-]+)/)?dt=(\d{4}-\d{2}-\d{2})/([^/]+)$")
# The folder listing runs whenever the definitions load (the code server, every run's process):
# one retry there, not the S3Resource's default 5, with which an unreachable bucket held each
# load 11 s before it fell back (measured). Reading and writing files keep the configured retries.
# (S3Resource.max_attempts reaches botocore as its `max_attempts`, which counts retries after the
# first request, whatever dagster-aws's field description says.)
FOLDER_LISTING_RETRIES = 1


@dataclass(frozen=True)
class LandingFile:
    """One object of the zone; ``version`` changes whenever its content may have changed."""

    key: str
    size: int
    modified: dt.datetime
    version: str


def city_day_of_key(key: str) -> tuple[str | None, str] | None:
    """``(city, day)`` of a readable landing file (city None for the export of every city), or
    None when the key is outside the layout."""
    match = _DAY_KEY.match(key)
    if not match or file_name_problem(match.group(3)) is not None:
        return None
    try:
        dt.date.fromisoformat(match.group(2))
    except ValueError:
        return None
    return match.group(1), match.group(2)


def day_of_key(key: str) -> str | None:
    """The day of a readable file of the export of every city (``raw/dt=D/``), else None."""
    found = city_day_of_key(key)
    return found[1] if found and found[0] is None else None


def day_prefix(day: str, city: str | None = None) -> str:
    """The folder of ``day``: of one city, or (``city`` None) of the export of every city."""
    return f"{RAW_PREFIX}/city={city}/dt={day}/" if city else f"{RAW_PREFIX}/dt={day}/"


class LandingZone(dg.ConfigurableResource):
    """Raw files by day; ``root`` is a directory or ``s3://bucket/prefix``."""

    root: str = str(default_data_dir() / "landing")
    s3: S3Resource | None = None
    _s3_client: Any = PrivateAttr(default=None)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def _client(self):
        """boto3 S3 client from the configured S3Resource (AWS default chain when none is set),
        made once per resource instance: creating a client costs 0.1-0.3 s."""
        if self._s3_client is None:
            self._s3_client = (self.s3 or S3Resource()).get_client()
        return self._s3_client

    def _bucket_and_prefix(self) -> tuple[str, str]:
        bucket, _, prefix = self.root.removeprefix("s3://").partition("/")
        return bucket, (prefix.strip("/") + "/") if prefix.strip("/") else ""

    def location(self, key: str = "") -> str:
        """Human-readable address of a key, for messages and metadata."""
        return f"{self.root.rstrip('/')}/{key}"

    def list_files(self, prefix: str = RAW_PREFIX + "/") -> list[LandingFile]:
        """Every object under ``prefix`` (relative to the root), sorted by key."""
        if self.is_s3:
            bucket, root_prefix = self._bucket_and_prefix()
            client = self._client()
            files = []
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=root_prefix + prefix
            ):
                for item in page.get("Contents", []):
                    files.append(
                        LandingFile(
                            key=item["Key"][len(root_prefix) :],
                            size=int(item["Size"]),
                            modified=item["LastModified"],
                            version=item["ETag"].strip('"'),
                        )
                    )
            return sorted(files, key=lambda f: f.key)
        base = Path(self.root)
        start = base / prefix
        if not start.exists():
            return []
        files = []
        for path in start.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                files.append(
                    LandingFile(
                        key=path.relative_to(base).as_posix(),
                        size=stat.st_size,
                        modified=dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.UTC),
                        version=f"{stat.st_mtime_ns}-{stat.st_size}",
                    )
                )
        return sorted(files, key=lambda f: f.key)

    def day_folders(self) -> dict[str | None, set[str]]:
        """The days that have a folder, per city id (None: exports of every city), from folder
        names only (local: two directory levels; S3: delimiter listings), never a full listing:
        this runs whenever the definitions are built."""
        found: dict[str | None, set[str]] = {}

        def add(city: str | None, folder: str) -> None:
            day = folder.removeprefix("dt=")
            if folder.startswith("dt=") and _ISO_DAY.match(day):
                found.setdefault(city, set()).add(day)

        client = (
            (self.s3 or S3Resource())
            .model_copy(update={"max_attempts": FOLDER_LISTING_RETRIES})
            .get_client()
            if self.is_s3
            else None
        )
        for name in self._subfolders(client, RAW_PREFIX + "/"):
            if name.startswith("city="):
                city = name.removeprefix("city=")
                for inner in self._subfolders(client, f"{RAW_PREFIX}/{name}/"):
                    add(city, inner)
            else:
                add(None, name)
        return found

    def _subfolders(self, client, prefix: str) -> list[str]:
        """Folder names under ``prefix``; ``client`` is the S3 client (None for a directory)."""
        if client is not None:
            bucket, root_prefix = self._bucket_and_prefix()
            names = []
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=root_prefix + prefix, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(root_prefix + prefix) :].rstrip("/"))
            return names
        folder = Path(self.root) / prefix
        return (
            [child.name for child in folder.iterdir() if child.is_dir()] if folder.is_dir() else []
        )

    def day_listing(self, day: str, city: str | None = None) -> list[LandingFile]:
        """Every object under the day folder (subfolders and unreadable names included)."""
        return self.list_files(day_prefix(day, city))

    def day_files(self, day: str, city: str | None = None) -> list[LandingFile]:
        """Files of one day folder that follow the layout (the ones the ingestion reads)."""
        return [f for f in self.day_listing(day, city) if city_day_of_key(f.key) == (city, day)]

    def read(self, key: str) -> bytes:
        if self.is_s3:
            bucket, root_prefix = self._bucket_and_prefix()
            response = self._client().get_object(Bucket=bucket, Key=root_prefix + key)
            return response["Body"].read()
        return (Path(self.root) / key).read_bytes()

    def write(self, key: str, content: bytes) -> None:
        """Store a file; readers never see a half-written one (temp file + rename locally)."""
        if self.is_s3:
            bucket, root_prefix = self._bucket_and_prefix()
            self._client().put_object(Bucket=bucket, Key=root_prefix + key, Body=content)
            return
        target = Path(self.root) / key
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as handle:
            handle.write(content)
        os.replace(handle.name, target)
