"""A one-page model card per champion: what it was trained on, how it compares with every
baseline, why the gates let it through, and what drives its forecasts where it matters most.

Contributions are XGBoost's exact tree SHAP values (``pred_contribs``): per row, one value per
feature plus the bias, summing to the model's margin, i.e. the log of the expected orders for
the Poisson and Tweedie objectives (a contribution of +0.7 multiplies the forecast by e^0.7 ≈ 2).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from geo_busyness.core.features import TARGET_COLUMN
from geo_busyness.core.model import TrainedModel, model_margin

BIAS = "bias"
BUSIEST_HEXAGONS = 5
TOP_FEATURES = 8


def contributions(trained: TrainedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Per row of ``frame``: each feature's contribution to the margin, and the bias; the
    trees used are the early-stopped ones :func:`core.model.predict` uses."""
    import xgboost as xgb  # a run process that never explains does not pay for it

    names = trained.feature_names
    values = trained.model.get_booster().predict(
        xgb.DMatrix(frame[names], base_margin=model_margin(trained.model, frame)),
        pred_contribs=True,
        iteration_range=(0, trained.best_iteration + 1),
    )
    return pd.DataFrame(values, columns=[*names, BIAS], index=frame.index)


def busiest_contributions(
    trained: TrainedModel,
    test: pd.DataFrame,
    hexagons: int = BUSIEST_HEXAGONS,
    features: int = TOP_FEATURES,
) -> pd.DataFrame:
    """Mean contribution per hexagon of the features that move the forecasts most there, for
    the hexagons with the most orders in the test slice (the ones couriers are sent to).
    Rows: hexagon (busiest first) with its test orders; columns: the features, then the bias."""
    if test.empty:
        return pd.DataFrame()
    orders = test.groupby("h3_cell")[TARGET_COLUMN].sum().nlargest(hexagons)
    rows = test.loc[test["h3_cell"].isin(orders.index)]
    values = contributions(trained, rows)
    values["h3_cell"] = rows["h3_cell"].to_numpy()
    means = values.groupby("h3_cell").mean().reindex(orders.index)
    top = means.drop(columns=BIAS).abs().mean().nlargest(features).index
    table = means[[*top, BIAS]]
    table.insert(0, "test_orders", orders.astype("int64"))
    return table


def feature_importance(trained: TrainedModel, features: int = TOP_FEATURES) -> pd.Series:
    """Total gain per feature (what the trees split on most usefully), largest first."""
    gain = trained.model.get_booster().get_score(importance_type="total_gain")
    return pd.Series(gain, dtype="float64").nlargest(features)


@dataclass(frozen=True)
class ModelCard:
    city: str
    version: str
    objective: str
    train_range: str
    train_rows: int
    test_range: str
    test_rows: int
    metrics: pd.DataFrame  # per predictor: mae, rmse, ...
    by_band: pd.DataFrame  # per band of actual orders: rows, MAE per predictor
    gates: Sequence[tuple[str, bool, str]]  # name, passed, verdict
    importance: pd.Series
    busiest: pd.DataFrame
    links: Mapping[str, str]  # label -> URL or location


def summary_markdown(card: ModelCard) -> str:
    """Two lines for the asset page (short: the UI shows Markdown inline under 1,000 chars)."""
    passed = sum(ok for _, ok, _ in card.gates)
    model = card.metrics.loc["model", "mae"]
    baselines = card.metrics.drop(
        index=[name for name in ("model", "champion") if name in card.metrics.index]
    )
    best = baselines["mae"].idxmin() if len(baselines) else None
    versus = (
        f" vs the best baseline, {best}, {baselines.loc[best, 'mae']:.4g}"
        if best is not None
        else ""
    )
    return (
        f"**{card.city} version {card.version}**: test MAE {model:.4g}{versus}; "
        f"{passed} of {len(card.gates)} gates passed; trained on {card.train_range}."
    )


def model_card_html(card: ModelCard) -> str:
    """The card as one self-contained HTML page (no script, no external resource)."""

    def table(frame: pd.DataFrame, index: bool = True, classes: str = "") -> str:
        return frame.to_html(
            float_format=lambda value: f"{value:.4g}", index=index, border=0, classes=classes
        )

    def link(label: str, target: str) -> str:
        shown = html.escape(target)
        if target.startswith(("http://", "https://")):
            return f'<li>{html.escape(label)}: <a href="{shown}">{shown}</a></li>'
        return f"<li>{html.escape(label)}: <code>{shown}</code></li>"

    gates = pd.DataFrame(
        [(name, "PASS" if ok else "FAIL", verdict) for name, ok, verdict in card.gates],
        columns=["gate", "verdict", "why"],
    )
    busiest = (
        table(card.busiest)
        if not card.busiest.empty
        else "<p>No test rows: nothing to explain.</p>"
    )
    title = f"Model card: {card.city}, version {card.version}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child, .text td, .text th {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary_markdown(card).replace("**", ""))}</p>
<h2>Data</h2>
<ul>
<li>city: {html.escape(card.city)}; objective: <code>{html.escape(card.objective)}</code></li>
<li>training (observed hexagon-hours; unknown hours are never targets): {card.train_rows:,} rows,
{html.escape(card.train_range)}</li>
<li>test: {card.test_rows:,} rows, {html.escape(card.test_range)}</li>
</ul>
<h2>Errors on the test slice, against every baseline</h2>
{table(card.metrics)}
<h2>Errors by busyness band (MAE, orders per hexagon-hour)</h2>
<p>The busy hexagon-hours are where couriers are sent: the overall MAE is dominated by the
many quiet ones.</p>
{table(card.by_band)}
<h2>Promotion gates</h2>
{table(gates, index=False, classes="text")}
<h2>Top features (total gain)</h2>
{table(card.importance.rename("total_gain").to_frame())}
<h2>What drives the forecast of the busiest hexagons</h2>
<p>Mean SHAP contribution (XGBoost <code>pred_contribs</code>) to the log of expected orders,
per hexagon over its test hours; the features that move these hexagons most, then the bias
(the trees' starting point: the log of the cell's 4-week profile estimate).</p>
{busiest}
<h2>Lineage</h2>
<ul>
{"".join(link(label, target) for label, target in card.links.items())}
</ul>
</body></html>
"""
