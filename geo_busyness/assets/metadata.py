"""Metadata helpers shared by the asset modules."""

from __future__ import annotations

import dagster as dg
import pandas as pd

OWNER = "team:data-platform"
PREVIEW_ROWS = 10


def preview(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """First rows as a Markdown table (readable in the asset's metadata panel)."""
    head = frame.head(rows).copy()
    for column in head.columns:
        if pd.api.types.is_float_dtype(head[column]):
            head[column] = head[column].round(4)
    return dg.MetadataValue.md(head.to_markdown(index=False) if len(head) else "_empty_")
