"""Ingestion group: landing-zone files → raw pings → clean pings + quarantine."""

import datetime

import dagster as dg
import pandas as pd

from geo_busyness.assets.metadata import OWNER, preview
from geo_busyness.automation import on_new_data
from geo_busyness.core.schema import (
    QuarantineReason,
    UnparseableFileError,
    read_raw_file,
    unparseable_file_rows,
    validate_pings,
)
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.city import CityResource
from geo_busyness.resources.landing_zone import LandingZone, day_prefix

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
        "the source file and row. A file that cannot be read as the contract keeps one record per "
        "source row, each carrying the file's error, so that all its rows are quarantined."
    ),
)
def raw_courier_pings(context: dg.AssetExecutionContext, landing_zone: LandingZone) -> pd.DataFrame:
    day = context.partition_key
    files = landing_zone.day_files(day)
    if not files:
        raise dg.Failure(
            description=f"No landing files for {day} under {landing_zone.location(day_prefix(day))}",
            allow_retries=False,
        )
    frames, unreadable = [], {}
    for landing_file in files:
        content = landing_zone.read(landing_file.key)
        try:
            frames.append(read_raw_file(landing_file.key, content))
        except UnparseableFileError as error:
            context.log.warning(str(error))
            unreadable[landing_file.key] = str(error)
            frames.append(unparseable_file_rows(landing_file.key, content, str(error)))
    raw = pd.concat(frames, ignore_index=True)
    rows_per_file = raw.groupby("source_file").size()
    context.add_output_metadata(
        {
            "files": dg.MetadataValue.json(
                [
                    {"key": f.key, "bytes": f.size, "rows": int(rows_per_file.get(f.key, 0))}
                    for f in files
                ]
            ),
            "bytes": sum(f.size for f in files),
            "unreadable_files": dg.MetadataValue.json(unreadable),
            "landing_zone": landing_zone.location(day_prefix(day)),
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
