"""Is the model still looking at the data it was trained on, and is it still as accurate?

Feature drift compares one day of busyness_features with the training reference through an
Evidently ``DataDriftPreset`` (per-column test, share of drifted columns, HTML report); error
growth compares a stored forecast with the orders that then happened. ``needs_retraining``
turns both into the decision the retraining automation acts on.

Evidently is imported inside :func:`feature_drift`: importing it takes seconds, and every
Dagster step process imports this module.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geo_busyness.core.plots import pyplot

# Deterministic functions of the timestamp: one day always "drifts" from a multi-week
# reference on day of week and weekend, which says nothing about the data.
CALENDAR_COLUMNS = ("hour_of_day", "day_of_week", "is_weekend")
# Evidently's own default share of drifted columns for dataset-level drift.
DATASET_DRIFT_SHARE = 0.5
DEFAULT_REFERENCE_ROWS = 50_000
DRIFT_TABLE_COLUMNS = ("column", "drift_score", "stattest", "threshold", "drifted")
FORECAST_KEY = ["h3_cell", "hour_start"]
PLOTTED_COLUMNS = 6


def monitored_columns(feature_names: Sequence[str]) -> list[str]:
    """The model features whose drift means something (calendar columns left out)."""
    return [name for name in feature_names if name not in CALENDAR_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Feature drift


@dataclass(frozen=True, eq=False)
class DriftResult:
    """``columns`` has one row per tested column (see :data:`DRIFT_TABLE_COLUMNS`): Evidently
    picks the test from the data (K-S p-value below 1,000 reference values, Wasserstein or
    Jensen-Shannon distance above), so a score only compares with its own ``threshold``.
    ``skipped`` maps each column left out to the reason."""

    columns: pd.DataFrame
    drift_share: float
    dataset_drift: bool
    skipped: dict[str, str]
    reference_rows: int
    reference_rows_available: int
    current_rows: int
    html: str = field(repr=False)

    @property
    def drifted_columns(self) -> list[str]:
        return self.columns.loc[self.columns["drifted"], "column"].tolist()

    @property
    def n_drifted(self) -> int:
        return int(self.columns["drifted"].sum())


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    max_reference_rows: int = DEFAULT_REFERENCE_ROWS,
    seed: int = 0,
) -> DriftResult:
    """Per-column drift of ``current`` against ``reference`` on the numeric ``columns``.

    The reference is sampled down to ``max_reference_rows`` (seeded, so a re-run gives the same
    report) because the tests' cost grows with it while a few tens of thousands of rows already
    pin a distribution down. Columns with no finite value on either side cannot be tested and
    are skipped with the reason, as are non-numeric ones.
    """
    if max_reference_rows < 1:
        raise ValueError(f"max_reference_rows must be >= 1, got {max_reference_rows!r}")
    for name, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise ValueError(f"the {name} data has no rows: nothing to compare")
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise ValueError(f"the {name} data lacks columns {missing}")
    if not columns:
        raise ValueError("no columns to compare")

    sampled = (
        reference.sample(n=max_reference_rows, random_state=seed)
        if len(reference) > max_reference_rows
        else reference
    )
    skipped: dict[str, str] = {}
    tested: list[str] = []
    for column in columns:
        if not (
            pd.api.types.is_numeric_dtype(sampled[column])
            and pd.api.types.is_numeric_dtype(current[column])
        ) or pd.api.types.is_bool_dtype(current[column]):
            skipped[column] = f"not numeric ({current[column].dtype})"
            continue
        empty = [
            name
            for name, frame in (("reference", sampled), ("current", current))
            if not np.isfinite(frame[column].to_numpy("float64", na_value=np.nan)).any()
        ]
        if empty:
            skipped[column] = f"no finite value in the {' and '.join(empty)} data"
        else:
            tested.append(column)
    if not tested:
        raise ValueError(f"no column can be tested: {skipped}")

    table, html = _evidently_drift(_numeric(sampled, tested), _numeric(current, tested), tested)
    share = float(table["drifted"].mean())
    return DriftResult(
        columns=table,
        drift_share=share,
        dataset_drift=share >= DATASET_DRIFT_SHARE,
        skipped=skipped,
        reference_rows=len(sampled),
        reference_rows_available=len(reference),
        current_rows=len(current),
        html=html,
    )


def _numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """float64 with ±inf as missing, so Evidently sees one dtype and drops every unknown."""
    values = frame[columns].astype("float64").reset_index(drop=True)
    return values.replace([np.inf, -np.inf], np.nan)


def _evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> tuple[pd.DataFrame, str]:
    """Run the preset; read each column's score from its ValueDrift metric and whether it
    drifted from that metric's test (Evidently knows which way each stattest points)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    # Declared numerical: small integer counts would otherwise be inferred as categories.
    definition = DataDefinition(numerical_columns=columns)
    snapshot = Report(
        [DataDriftPreset(columns=columns, drift_share=DATASET_DRIFT_SHARE)], include_tests=True
    ).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    results = snapshot.dict()
    failed = {
        test["metric_config"]["metric_id"]: _status(test["status"]) == "FAIL"
        for test in results["tests"]
    }
    rows = [
        {
            "column": metric["config"]["column"],
            "drift_score": float(metric["value"]),
            "stattest": str(metric["config"]["method"]),
            "threshold": float(metric["config"]["threshold"]),
            "drifted": failed[metric["id"]],
        }
        for metric in results["metrics"]
        if metric["config"].get("type", "").endswith(":ValueDrift")
    ]
    table = pd.DataFrame(rows, columns=list(DRIFT_TABLE_COLUMNS))
    if sorted(table["column"]) != sorted(columns):
        raise RuntimeError(
            f"Evidently reported drift for {table['column'].tolist()}, expected {columns}"
        )
    table["drifted"] = table["drifted"].astype(bool)
    return table, snapshot.get_html_str(as_iframe=False)


def _status(status: object) -> str:
    return str(getattr(status, "value", status))


def drift_chart_png(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    result: DriftResult,
    columns: int = PLOTTED_COLUMNS,
) -> bytes | None:
    """Reference vs current histograms of the drifted columns (at most ``columns``), so the
    metadata panel shows how each distribution moved; None when nothing drifted."""
    names = result.drifted_columns[:columns]
    if not names:
        return None
    plt = pyplot()
    scores = result.columns.set_index("column")
    n_cols = min(2, len(names))  # two panels wide: fits the metadata table (see plots.py)
    n_rows = math.ceil(len(names) / n_cols)
    figure, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.1 * n_cols, 2.6 * n_rows), dpi=100, squeeze=False
    )
    for axis, name in zip(axes.flat, names, strict=False):
        before = _finite(reference[name])
        after = _finite(current[name])
        bins = np.histogram_bin_edges(np.concatenate([before, after]), bins=30)
        axis.hist(before, bins=bins, density=True, alpha=0.5, label="reference", color="grey")
        axis.hist(
            after,
            bins=bins,
            density=True,
            histtype="step",
            lw=1.5,
            label="current",
            color="crimson",
        )
        row = scores.loc[name]
        axis.set_title(f"{name}\n{row['stattest']}: {row['drift_score']:.3g}", fontsize=10)
        axis.tick_params(labelsize=9)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _finite(values: pd.Series) -> np.ndarray:
    array = values.to_numpy("float64", na_value=np.nan)
    return array[np.isfinite(array)]


# ---------------------------------------------------------------------------------------------
# Forecast error growth


@dataclass(frozen=True)
class ErrorGrowth:
    """The stored forecast's MAE on the orders that happened, against the MAE the model had on
    its test slice when it was trained (``error_ratio`` > 1: it got worse). ``uncovered_*``
    are orders in hexagons the forecast had no row for (a new district), which the MAE cannot
    see."""

    forecast_mae: float
    training_mae: float
    error_ratio: float
    hexagon_hours: int
    predicted_orders: float
    actual_orders: int
    uncovered_orders: int
    uncovered_hexagons: int


def forecast_error_growth(
    forecast: pd.DataFrame,
    actual_hourly: pd.DataFrame,
    training_mae: float,
    forecast_column: str = "busyness_forecast",
) -> ErrorGrowth:
    """MAE of ``forecast`` (h3_cell, hour_start, ``forecast_column``) against the ``orders`` of
    ``actual_hourly`` on the same hexagon-hours; a forecast hexagon-hour absent from the
    actuals had no order (hex_hourly_busyness only keeps hours with pings)."""
    if not (np.isfinite(training_mae) and training_mae > 0):
        raise ValueError(f"training_mae must be a positive number, got {training_mae!r}")
    if forecast.empty:
        raise ValueError("the forecast has no rows")
    for name, frame, needed in (
        ("forecast", forecast, [*FORECAST_KEY, forecast_column]),
        ("actual_hourly", actual_hourly, [*FORECAST_KEY, "orders"]),
    ):
        missing = [column for column in needed if column not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks columns {missing}")
    if forecast.duplicated(FORECAST_KEY).any():
        raise ValueError("the forecast has more than one row for some hexagon-hour")
    first, last = forecast["hour_start"].min(), forecast["hour_start"].max()
    outside = ~actual_hourly["hour_start"].between(first, last)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} actual rows fall outside the forecast's hours "
            f"({first} to {last}): are the forecast and the actuals of the same day?"
        )

    actual = actual_hourly[[*FORECAST_KEY, "orders"]].astype({"h3_cell": "string"})
    joined = forecast[[*FORECAST_KEY, forecast_column]].astype({"h3_cell": "string"})
    joined = joined.merge(actual, on=FORECAST_KEY, how="left", validate="one_to_one")
    orders = joined["orders"].fillna(0).to_numpy("float64")
    predicted = joined[forecast_column].to_numpy("float64")
    if not np.isfinite(predicted).all():
        raise ValueError("the forecast has missing or infinite predictions")
    mae = float(np.mean(np.abs(predicted - orders)))
    covered = actual["h3_cell"].isin(set(joined["h3_cell"]))
    return ErrorGrowth(
        forecast_mae=mae,
        training_mae=float(training_mae),
        error_ratio=mae / float(training_mae),
        hexagon_hours=len(joined),
        predicted_orders=float(predicted.sum()),
        actual_orders=int(actual["orders"].sum()),
        uncovered_orders=int(actual.loc[~covered, "orders"].sum()),
        uncovered_hexagons=int(actual.loc[~covered, "h3_cell"].nunique()),
    )


# ---------------------------------------------------------------------------------------------
# Retraining decision


@dataclass(frozen=True)
class DriftThresholds:
    """Retrain when more than ``max_drift_share`` of the monitored features drifted, or when
    the forecast MAE exceeds ``max_error_ratio`` times the model's test MAE at training time."""

    # Measured on the simulated city: a baseline day drifts 0-8% of the monitored features, a
    # day of the new_district scenario 42% (20k pings) or 25% (6k pings).
    max_drift_share: float = 0.2
    max_error_ratio: float = 1.5

    def __post_init__(self) -> None:
        if not 0 <= self.max_drift_share <= 1:  # also rejects NaN
            raise ValueError(f"max_drift_share must be in [0, 1], got {self.max_drift_share!r}")
        if not self.max_error_ratio > 0:
            raise ValueError(f"max_error_ratio must be > 0, got {self.max_error_ratio!r}")


def needs_retraining(
    drift_share: float, error_ratio: float | None, thresholds: DriftThresholds
) -> tuple[bool, str]:
    """(retrain?, why). Limits are inclusive: a value equal to its limit is still within.
    ``error_ratio`` is None until the actuals of a forecast day have landed."""
    if not 0 <= drift_share <= 1:
        raise ValueError(f"drift_share must be in [0, 1], got {drift_share!r}")
    if error_ratio is not None and not error_ratio >= 0:
        raise ValueError(f"error_ratio must be >= 0 or None, got {error_ratio!r}")
    reasons = []
    if drift_share > thresholds.max_drift_share:
        reasons.append(
            f"{drift_share:.0%} of the features drifted (limit {thresholds.max_drift_share:.0%})"
        )
    if error_ratio is not None and error_ratio > thresholds.max_error_ratio:
        reasons.append(
            f"forecast MAE is {error_ratio:.2f}x the test MAE at training time "
            f"(limit {thresholds.max_error_ratio:.2f}x)"
        )
    if reasons:
        return True, "; ".join(reasons)
    error = (
        "no forecast error to compare (no forecast or no actuals yet)"
        if error_ratio is None
        else f"forecast MAE {error_ratio:.2f}x the test MAE (limit {thresholds.max_error_ratio:.2f}x)"
    )
    return False, (
        f"{drift_share:.0%} of the features drifted (limit {thresholds.max_drift_share:.0%}); "
        + error
    )
