"""Ingestion group, per city: landing-zone files → raw pings → clean pings + quarantine; and,
for exports of every city, the rows no city takes (``unrouted_pings``)."""

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from geo_busyness.assets.metadata import (
    OWNER,
    STAGE_TAG,
    city_asset,
    city_in,
    city_key,
    preview,
)
from geo_busyness.automation import on_new_data
from geo_busyness.core.catalog import city_fingerprint
from geo_busyness.core.city import City
from geo_busyness.core.export import route_export, unrouted_quarantine
from geo_busyness.core.features import day_end
from geo_busyness.core.landing import day_folder_problem
from geo_busyness.core.schema import QuarantineReason, read_landing_file, validate_pings
from geo_busyness.partitions import city_partitions, export_partitions
from geo_busyness.resources.io_manager import commit_group
from geo_busyness.resources.landing_zone import LandingZone, city_day_of_key, day_prefix

GROUP = "ingestion"
UNROUTED = "unrouted_pings"
CITY_METADATA = "city"
VALIDATED = "validated_courier_pings"
# Clean and quarantined pings of a day are published together, by one commit record
# (`<city>/validated_courier_pings/<day>.json`): a reader never sees them from two runs.
VALIDATED_PAIR = commit_group(VALIDATED, ["clean_courier_pings", "quarantined_pings"])


@dataclass
class _Folder:
    """What one day folder held: the frames read and a record per key seen."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    fallback_rows: int = 0
    read: int = 0
    bytes: int = 0
    landed: list[datetime.datetime] = field(default_factory=list)
    """When each file read landed (S3 LastModified, a local file's mtime)."""


LANDED_UNTIL = "landed_until"


def landed_until(
    instance: dg.DagsterInstance, city: City, days: Sequence[str]
) -> dict[str, pd.Timestamp]:
    """When the newest file of each of ``days`` landed, from the latest raw_courier_pings
    materialization of the day (days ingested before it was recorded are left out)."""
    found = {}
    for day in days:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=city_key(city, "raw_courier_pings"), asset_partitions=[day]
            ),
            limit=1,
        ).records
        materialization = records[0].asset_materialization if records else None
        value = materialization.metadata.get(LANDED_UNTIL) if materialization else None
        if value is not None:
            found[day] = pd.Timestamp(value.value)
    return found


def _read_folder(
    context: dg.AssetExecutionContext, zone: LandingZone, day: str, city: str | None
) -> _Folder:
    """Every readable file of one day folder, as text columns with source file and row; a file
    that cannot be read as the contract keeps one record per source row with its error."""
    prefix = day_prefix(day, city)
    folder = _Folder()
    for landing_file in zone.day_listing(day, city):
        if city_day_of_key(landing_file.key) != (city, day):
            why = day_folder_problem(landing_file.key[len(prefix) :]) or "not of the layout"
            context.log.warning(f"Not reading {zone.location(landing_file.key)}: {why}")
            folder.records.append(
                {
                    "key": landing_file.key,
                    "bytes": landing_file.size,
                    "read": False,
                    "rows": None,
                    "not_read": why,
                }
            )
            continue
        read = read_landing_file(landing_file.key, zone.read(landing_file.key))
        folder.frames.append(read.frame)
        folder.read += 1
        folder.bytes += landing_file.size
        folder.landed.append(landing_file.modified)
        if read.error is not None:
            context.log.warning(read.error)
            folder.unreadable[landing_file.key] = read.error
        if read.format.fallback_rows:
            context.log.warning(
                f"{landing_file.key}: bytes that are not UTF-8 were read as cp1252 in "
                f"{read.format.fallback_rows} row(s), e.g. source rows "
                f"{list(read.format.fallback_source_rows)}"
            )
        folder.fallback_rows += read.format.fallback_rows
        folder.records.append(
            {
                "key": landing_file.key,
                "bytes": landing_file.size,
                "read": True,
                "rows": len(read.frame),
                "quarantined_whole": read.error is not None,
                **read.format.as_metadata(),
                "error": read.error,
            }
        )
    return folder


def _concat(frames: list[pd.DataFrame], like: list[pd.DataFrame]) -> pd.DataFrame:
    if frames:
        return pd.concat(frames, ignore_index=True)
    return like[0].iloc[:0] if like else pd.DataFrame()


def _no_files(zone: LandingZone, folders: dict[str, _Folder], day: str) -> dg.Failure:
    not_read = {
        record["key"]: record["not_read"]
        for folder in folders.values()
        for record in folder.records
        if not record["read"]
    }
    found = f"; found only {len(not_read)} unreadable key(s): {not_read}" if not_read else ""
    where = " or ".join(zone.location(prefix) for prefix in folders)
    return dg.Failure(
        description=f"No landing files for {day} under {where}{found}", allow_retries=False
    )


def build_ingestion(city: City, cities: Sequence[City]) -> list:
    """The ingestion assets of ``city`` (``cities``: the whole catalog, for routing)."""
    partitions = city_partitions(city)

    @dg.asset(
        name="raw_courier_pings",
        partitions_def=partitions,
        kinds={"pandas", "parquet"},
        output_required=False,
        # The city as built: the catalog entry (and first landed day) on the asset's page.
        metadata={CITY_METADATA: dg.MetadataValue.json(city.as_record())},
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=datetime.timedelta(hours=48), warn_window=datetime.timedelta(hours=30)
        ),
        description=(
            f"The pings of {city.name} for the day: every file of `raw/city={city.id}/dt=DAY/` "
            "and the rows of the export of every city (`raw/dt=DAY/`) whose courier is inside "
            f"{city.id}'s service area, as text columns with the source file and row. "
            "CSV/TSV/Parquet in any letter case, compressed or not, in UTF-8/UTF-16 or a legacy "
            "8-bit encoding, with any common delimiter. A file that cannot be read as the "
            "contract keeps one record per source row, each carrying the file's error, so that "
            "all its rows are quarantined. The metadata lists every file seen: how it was read, "
            "its rows and the rows taken, or why it was not read. A day with no file of the "
            "city and no row of it in the export gets no partition (not a day of zeros)."
        ),
        **city_asset(city, GROUP),
    )
    def raw_courier_pings(context: dg.AssetExecutionContext, landing_zone: LandingZone):
        day = context.partition_key
        own = _read_folder(context, landing_zone, day, city.id)
        export = _read_folder(context, landing_zone, day, None)
        if not own.read and not export.read:
            raise _no_files(
                landing_zone, {day_prefix(day, city.id): own, day_prefix(day): export}, day
            )
        export_rows = _concat(export.frames, own.frames)
        taken = export_rows
        if len(export_rows):
            index = [c.id for c in cities].index(city.id)
            taken = export_rows.loc[route_export(export_rows, cities) == index]
        taken_per_file = taken["source_file"].value_counts() if len(taken) else pd.Series()
        for record in export.records:
            if record["read"]:
                record["rows_of_city"] = int(taken_per_file.get(record["key"], 0))
        if not own.read and taken.empty:
            # The city was not served that day (an export of the cities of the time): no
            # partition, rather than a day of false zeros.
            context.log.info(
                f"No row of the export of {day} is in the service area of {city.id}, and "
                f"{landing_zone.location(day_prefix(day, city.id))} holds no file: nothing to "
                "ingest for this city"
            )
            return
        raw = _concat([*own.frames, taken.reset_index(drop=True)], own.frames + export.frames)
        landed = pd.Timestamp(max(own.landed + export.landed)).tz_convert("UTC")
        context.add_output_metadata(
            {
                # an export taken before the day ended cannot hold the rest of the day
                LANDED_UNTIL: landed.isoformat(),
                "landed_after_day_end": bool(landed >= day_end(day)),
                "files": dg.MetadataValue.json(own.records + export.records),
                "files_read": own.read + export.read,
                "export_files_read": export.read,
                "source_rows": len(raw),
                "export_rows_taken": len(taken),
                "bytes": own.bytes + export.bytes,
                "unreadable_files": dg.MetadataValue.json({**own.unreadable, **export.unreadable}),
                "fallback_decoded_rows": own.fallback_rows + export.fallback_rows,
                "landing_zone": landing_zone.location(day_prefix(day, city.id)),
                "preview": preview(raw),
            }
        )
        yield dg.Output(raw)

    def validated_out(description: str) -> dg.AssetOut:
        """One of the two tables published together by the validation (``VALIDATED_PAIR``)."""
        return dg.AssetOut(
            key_prefix=[city.key],
            owners=[OWNER],
            kinds={"pandas", "parquet"},
            tags={STAGE_TAG: GROUP},
            code_version=city_fingerprint(city),
            description=description,
            metadata=VALIDATED_PAIR,
            automation_condition=on_new_data(city),
        )

    @dg.multi_asset(
        name=f"{city.key}__{VALIDATED}",
        partitions_def=partitions,
        group_name=city.key,
        code_version=city_fingerprint(city),
        ins={"raw_courier_pings": city_in(city, "raw_courier_pings")},
        outs={
            "clean_courier_pings": validated_out(
                "Typed pings that passed every rule of the data contract (DESIGN §2)."
            ),
            "quarantined_pings": validated_out(
                "Refused rows exactly as they arrived, with `reason` and `detail`."
            ),
        },
    )
    def validated_courier_pings(context: dg.AssetExecutionContext, raw_courier_pings):
        """Split the day's raw rows into clean and quarantined (rows in = clean + quarantined)."""
        result = validate_pings(raw_courier_pings, city, partition_day=context.partition_key)
        counts = result.reason_counts()
        share = len(result.quarantined) / max(len(raw_courier_pings), 1)
        yield dg.Output(
            result.clean,
            output_name="clean_courier_pings",
            metadata={
                "raw_rows": len(raw_courier_pings),
                "quarantined_rows": len(result.quarantined),
                "quarantined_share": round(share, 4),
                "preview": preview(result.clean),
            },
        )
        yield dg.Output(
            result.quarantined,
            output_name="quarantined_pings",
            metadata={
                **{f"reason/{reason}": count for reason, count in counts.items()},
                "preview": preview(result.quarantined),
            },
        )
        unparseable_rows = counts[QuarantineReason.UNPARSEABLE_FILE.value]
        if unparseable_rows:
            quarantined = result.quarantined
            files = quarantined.loc[
                quarantined["reason"] == QuarantineReason.UNPARSEABLE_FILE.value, "source_file"
            ].nunique()
            context.log.warning(
                f"{files} landing file(s) could not be parsed; their {unparseable_rows} row(s) "
                "are quarantined"
            )

    return [raw_courier_pings, validated_courier_pings]


def catalog_fingerprint(cities: Sequence[City]) -> str:
    joined = ",".join(city_fingerprint(city) for city in cities)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def build_unrouted(cities: Sequence[City]) -> dg.AssetsDefinition:
    """``unrouted_pings``: the rows of the day's export of every city that no city takes."""

    @dg.asset(
        name=UNROUTED,
        partitions_def=export_partitions(cities),
        group_name="landing",
        owners=[OWNER],
        kinds={"pandas", "parquet"},
        tags={STAGE_TAG: GROUP},
        code_version=catalog_fingerprint(cities),
        description=(
            "Rows of the export of every city (`raw/dt=DAY/`) whose courier is inside no "
            "city's service area, quarantined with the first contract rule they break against "
            "the nearest city (e.g. `implausible_location` for a swapped sign), else "
            "`outside_service_area`. With the cities' raw pings, every row of such a file is "
            "accounted for exactly once."
        ),
    )
    def unrouted_pings(context: dg.AssetExecutionContext, landing_zone: LandingZone):
        day = context.partition_key
        export = _read_folder(context, landing_zone, day, None)
        frame = _concat(export.frames, [])
        table = (
            unrouted_quarantine(frame, cities, partition_day=day)
            if len(frame)
            else unrouted_quarantine(_empty_raw(), cities)
        )
        per_file = table["source_file"].value_counts()
        for record in export.records:
            if record["read"]:
                record["rows_unrouted"] = int(per_file.get(record["key"], 0))
        counts = table["reason"].value_counts()
        context.add_output_metadata(
            {
                "files": dg.MetadataValue.json(export.records),
                "export_rows": len(frame),
                "unrouted_rows": len(table),
                **{f"reason/{reason}": int(count) for reason, count in counts.items()},
                "preview": preview(table),
            }
        )
        return table

    return unrouted_pings


def _empty_raw() -> pd.DataFrame:
    from geo_busyness.core.schema import RAW_COLUMNS, SOURCE_COLUMNS

    return pd.DataFrame(
        {column: pd.Series(dtype=object) for column in (*RAW_COLUMNS, *SOURCE_COLUMNS)}
    )
