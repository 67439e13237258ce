"""Pictures for asset metadata: people read a hexagon map faster than a table."""

from __future__ import annotations

import base64
import io

import numpy as np

from geo_busyness.core.geo import cell_boundary

# Shown at their pixel size in the metadata table of the asset page (the UI does not scale
# images): 620 x 500 px fits its value column on a laptop screen.
FIGURE_SIZE = (6.2, 5.0)
DPI = 100


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use: every Dagster
    run process imports this module, few draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def hexagon_map_png(cells: np.ndarray, values: np.ndarray, title: str, label: str) -> bytes:
    """PNG of H3 cells coloured by value (one polygon per distinct cell)."""
    polygons = [[(lon, lat) for lat, lon in cell_boundary(str(cell))] for cell in cells]
    plt = pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=DPI)
    from matplotlib.collections import PolyCollection
    from matplotlib.ticker import MaxNLocator

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
    # A city spans a few hundredths of a degree: few, unshifted ticks stay legible.
    axes.xaxis.set_major_locator(MaxNLocator(5))
    axes.ticklabel_format(useOffset=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Inline a PNG in Markdown metadata (the Dagster UI renders data URIs)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def predicted_vs_actual_png(
    actual: np.ndarray, predictions: dict[str, np.ndarray], title: str, label: str = "orders"
) -> bytes:
    """Mean prediction per actual count for each predictor, over a scatter of the first.

    Counts overplot badly as a plain scatter; the per-count means show the bias at every
    busyness level (a good model follows the diagonal), the scatter shows the spread.
    """
    actual = np.asarray(actual, dtype="float64")
    plt = pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_SIZE, dpi=DPI)
    first = next(iter(predictions))
    axes.scatter(actual, predictions[first], s=4, alpha=0.15, color="grey", rasterized=True)
    levels = np.unique(actual)
    for name, predicted in predictions.items():
        predicted = np.asarray(predicted, dtype="float64")
        index = np.searchsorted(levels, actual)
        sums = np.bincount(index, weights=np.nan_to_num(predicted), minlength=len(levels))
        counts = np.bincount(index, minlength=len(levels))
        # points, not a line: the means of the rare high counts jump, and a line zig-zags
        axes.plot(
            levels, sums / np.maximum(counts, 1), marker="o", markersize=4, linestyle="", label=name
        )
    top = float(actual.max()) if actual.size else 1.0
    axes.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--", label="y = x")
    axes.set_xlabel(f"actual {label}")
    axes.set_ylabel(f"predicted {label}")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
