"""Metadata helpers shared by the asset modules."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from geo_busyness.core.catalog import city_fingerprint
from geo_busyness.core.city import City

OWNER = "team:data-platform"
PREVIEW_ROWS = 10


def preview(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """First rows as a Markdown table (readable in the asset's metadata panel)."""
    head = frame.head(rows).copy()
    for column in head.columns:
        if pd.api.types.is_float_dtype(head[column]):
            head[column] = head[column].round(4)
    return dg.MetadataValue.md(head.to_markdown(index=False) if len(head) else "_empty_")


def shown(value):
    """A float rounded to what a reader compares (4 significant digits), anything else as is:
    ``0.7635`` in the UI, not ``0.7635391413373088``."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


STAGE_TAG = "geo_busyness/stage"


def picture_path(context: dg.AssetExecutionContext, city: City, name: str) -> str:
    """Where a picture of this materialization goes in the report store: one file per run, so
    each materialization in the asset's history keeps its own picture."""
    partition = context.partition_key if context.has_partition_key else "all"
    asset = context.asset_key.path[-1]
    return f"pictures/{city.id}/{asset}/{partition}/{name}-{context.run.run_id[:8]}.png"


def city_key(city: City, name: str) -> dg.AssetKey:
    """The key of a city's asset: ``<city key>/<name>``."""
    return dg.AssetKey([city.key, name])


def city_in(city: City, name: str, **kwargs) -> dg.AssetIn:
    """An input on the city's own asset ``name``."""
    return dg.AssetIn(key=city_key(city, name), **kwargs)


def city_asset(city: City, stage: str) -> dict:
    """What every asset of a city shares: its key prefix, its group (one per city in the UI),
    its stage tag (what jobs select) and, as code version, the fingerprint of its catalog
    entry, so what was built before the entry changed shows as stale."""
    return {
        "key_prefix": [city.key],
        "group_name": city.key,
        "tags": {STAGE_TAG: stage},
        "code_version": city_fingerprint(city),
        "owners": [OWNER],
    }


def stage_selection(stage: str, city: City | None = None) -> dg.AssetSelection:
    """The assets of ``stage`` (of one city, or of every city)."""
    selection = dg.AssetSelection.tag(STAGE_TAG, stage)
    return selection & dg.AssetSelection.key_prefixes([city.key]) if city else selection
