"""Ingestion group: landing-zone files → raw pings → clean pings + quarantine."""

import datetime

import dagster as dg
import pandas as pd

from geo_busyness.assets.metadata import OWNER, preview
from geo_busyness.automation import on_new_data
from geo_busyness.core.landing import day_folder_problem
from geo_busyness.core.schema import QuarantineReason, read_landing_file, validate_pings
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.city import CityResource
from geo_busyness.resources.landing_zone import LandingZone, day_of_key, day_prefix

GROUP = "ingestion"


@dg.asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    owners=[OWNER],
    kinds={"pandas", "parquet"},
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=datetime.timedelta(hours=48), warn_window=datetime.timedelta(hours=30)
    ),
    description=(
        "Every file of the day from the landing zone (`raw/dt=YYYY-MM-DD/`), as text columns with "
        "the source file and row: CSV/TSV/Parquet in any letter case, compressed or not, in "
        "UTF-8/UTF-16 or a legacy 8-bit encoding, with any common delimiter. A file that cannot "
        "be read as the contract keeps one record per source row, each carrying the file's "
        "error, so that all its rows are quarantined. The metadata lists every file seen under "
        "the day folder: how it was read and its rows, or why it was not read."
    ),
)
def raw_courier_pings(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> pd.DataFrame:
    day = context.partition_key
    prefix = day_prefix(day)
    seen = landing_zone.day_listing(day)
    not_read = {
        f.key: day_folder_problem(f.key[len(prefix) :]) or "not a file of this day's layout"
        for f in seen
        if day_of_key(f.key) != day
    }
    for key, why in not_read.items():
        context.log.warning(f"Not reading {landing_zone.location(key)}: {why}")
    files = [f for f in seen if f.key not in not_read]
    if not files:
        found = f"; found only {len(not_read)} unreadable key(s): {not_read}" if not_read else ""
        raise dg.Failure(
            description=f"No landing files for {day} under {landing_zone.location(prefix)}{found}",
            allow_retries=False,
        )
    frames, unreadable, records = [], {}, {}
    for landing_file in files:
        read = read_landing_file(landing_file.key, landing_zone.read(landing_file.key))
        frames.append(read.frame)
        if read.error is not None:
            context.log.warning(read.error)
            unreadable[landing_file.key] = read.error
        if read.format.fallback_rows:
            context.log.warning(
                f"{landing_file.key}: bytes that are not UTF-8 were read as cp1252 in "
                f"{read.format.fallback_rows} row(s), e.g. source rows "
                f"{list(read.format.fallback_source_rows)}"
            )
        records[landing_file.key] = {
            "read": True,
            "rows": len(read.frame),
            "quarantined_whole": read.error is not None,
            **read.format.as_metadata(),
            "error": read.error,
        }
    raw = pd.concat(frames, ignore_index=True)
    context.add_output_metadata(
        {
            "files": dg.MetadataValue.json(
                [
                    {
                        "key": f.key,
                        "bytes": f.size,
                        **records.get(
                            f.key, {"read": False, "rows": None, "not_read": not_read.get(f.key)}
                        ),
                    }
                    for f in seen
                ]
            ),
            "files_read": len(files),
            "files_not_read": dg.MetadataValue.json(not_read),
            "source_rows": len(raw),
            "bytes": sum(f.size for f in files),
            "unreadable_files": dg.MetadataValue.json(unreadable),
            "fallback_decoded_rows": sum(r["fallback_decoded_rows"] for r in records.values()),
            "landing_zone": landing_zone.location(prefix),
            "preview": preview(raw),
        }
    )
    return raw


@dg.multi_asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    outs={
        "clean_courier_pings": dg.AssetOut(
            owners=[OWNER],
            kinds={"pandas", "parquet"},
            description="Typed pings that passed every rule of the data contract (DESIGN §2).",
            automation_condition=on_new_data(),
        ),
        "quarantined_pings": dg.AssetOut(
            owners=[OWNER],
            kinds={"pandas", "parquet"},
            description="Refused rows exactly as they arrived, with `reason` and `detail`.",
            automation_condition=on_new_data(),
        ),
    },
)
def validated_courier_pings(
    context: dg.AssetExecutionContext, raw_courier_pings: pd.DataFrame, city: CityResource
):
    """Split the day's raw rows into clean and quarantined (rows in = clean + quarantined)."""
    result = validate_pings(raw_courier_pings, city.to_city(), partition_day=context.partition_key)
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
