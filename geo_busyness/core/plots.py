"""Pictures for asset metadata: people read a hexagon map faster than a table."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection

from geo_busyness.core.geo import cell_boundary


def hexagon_map_png(cells: np.ndarray, values: np.ndarray, title: str, label: str) -> bytes:
    """PNG of H3 cells coloured by value (one polygon per distinct cell)."""
    polygons = [[(lon, lat) for lat, lon in cell_boundary(str(cell))] for cell in cells]
    figure, axes = plt.subplots(figsize=(6, 5), dpi=90)
    collection = PolyCollection(
        polygons, array=np.asarray(values, float), cmap="magma_r", edgecolors="grey", linewidths=0.3
    )
    axes.add_collection(collection)
    axes.autoscale_view()
    if len(polygons):
        mean_lat = np.mean([lat for polygon in polygons for _, lat in polygon])
        axes.set_aspect(1 / np.cos(np.radians(mean_lat)))
    figure.colorbar(collection, ax=axes, label=label)
    axes.set_title(title)
    axes.set_xlabel("longitude")
    axes.set_ylabel("latitude")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Inline a PNG in Markdown metadata (the Dagster UI renders data URIs)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
