"""Benchmark of the drift report (``core.drift.feature_drift``, Evidently ``DataDriftPreset``)
on one day of busyness_features against a training reference.

* import: ``import evidently`` in a fresh interpreter that already imported pandas and numpy,
  median of 3 (paid once per Dagster step process, so reported apart from the compute);
* default city: the simulator's default volume, reference = the features of days 2-10,
  current = day 13 (after the ``new_district`` scenario opens on day 11, so columns drift);
* large city: the Model section's city (resolution 9, 1M pings a day), reference = days 2-9,
  current = day 10, with the reference sampled to several sizes.

Each compute figure is the first call (cold caches) and the best of 3 after it, wall and CPU.
Figures are printed as a Markdown table and saved to ``bench-data/drift.json``.

    uv run --frozen --no-sync python scripts/bench_drift.py            # ~2 min
    uv run --frozen --no-sync python scripts/bench_drift.py --quick    # no large city, ~20 s
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys

import pandas as pd

# scripts/ is on sys.path when this file runs: one definition of the large city and the timers.
from bench import BENCH_DIR, LARGE_CITY, LARGE_SIMULATION, START, machine, max_rss_gb, timed

from geo_busyness.core.drift import (
    DEFAULT_REFERENCE_ROWS,
    drift_chart_png,
    feature_drift,
    monitored_columns,
)
from geo_busyness.core.features import feature_columns
from geo_busyness.simulate import SimulationConfig, simulated_city

TARGET_S = 5.0
IMPORT = (
    "import time, numpy, pandas; t = time.perf_counter(); import evidently; "
    "from evidently.presets import DataDriftPreset; print(time.perf_counter() - t)"
)
LARGE_REFERENCE_ROWS = (10_000, DEFAULT_REFERENCE_ROWS, 200_000)


def import_seconds(repeat: int = 3) -> float:
    runs = [
        float(
            subprocess.run([sys.executable, "-c", IMPORT], check=True, capture_output=True).stdout
        )
        for _ in range(repeat)
    ]
    return statistics.median(runs)


def measure(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], rows: int) -> dict:
    """Cold first call, then the best of 3, of feature_drift (Evidently run + HTML)."""
    result, first_s, first_cpu_s = timed(feature_drift, reference, current, columns, rows)
    runs = [timed(feature_drift, reference, current, columns, rows)[1:] for _ in range(3)]
    best_s, best_cpu_s = min(runs)
    _, chart_s, _ = timed(drift_chart_png, reference, current, result)
    return {
        "max_reference_rows": rows,
        "reference_rows": result.reference_rows,
        "reference_rows_available": result.reference_rows_available,
        "current_rows": result.current_rows,
        "columns": len(result.columns),
        "drift_share": result.drift_share,
        "drifted_columns": result.drifted_columns,
        "html_mb": len(result.html.encode()) / 1e6,
        "first_s": first_s,
        "first_cpu_s": first_cpu_s,
        "best_s": best_s,
        "best_cpu_s": best_cpu_s,
        "chart_s": chart_s,
    }


def day_of(k: int) -> str:
    return (START + dt.timedelta(days=k - 1)).isoformat()


def bench_default() -> dict:
    config = SimulationConfig(
        start_date=START,
        days=13,
        dirty_files=False,
        scenario="new_district",
        scenario_start=START + dt.timedelta(days=10),
    )
    features = simulated_city(config).features
    reference = pd.concat([features[day_of(k)] for k in range(2, 11)], ignore_index=True)
    columns = monitored_columns(feature_columns(config.city.n_restaurant_clusters))
    out = measure(reference, features[day_of(13)], columns, DEFAULT_REFERENCE_ROWS)
    return {**out, "pings_per_day": config.pings_per_day}


def bench_large() -> dict:
    config = SimulationConfig(
        city=LARGE_CITY,
        start_date=START,
        days=10,
        pings_per_day=1_000_000,
        dirty_files=False,
        **LARGE_SIMULATION,
    )
    features, simulate_s, _ = timed(lambda: simulated_city(config).features)
    reference = pd.concat([features[day_of(k)] for k in range(2, 10)], ignore_index=True)
    current = features[day_of(10)]
    del features
    columns = monitored_columns(feature_columns(LARGE_CITY.n_restaurant_clusters))
    runs = [measure(reference, current, columns, rows) for rows in LARGE_REFERENCE_ROWS]
    return {"simulate_s": simulate_s, "pings_per_day": config.pings_per_day, "runs": runs}


def rows(results: dict) -> list[tuple[str, ...]]:
    table = [
        (
            "`import evidently` (fresh interpreter, pandas loaded), median of 3",
            f"{results['import_s']:.1f} s",
        )
    ]
    cases = [("default city", results["default"])]
    cases += [("large city", run) for run in results.get("large", {}).get("runs", [])]
    for label, r in cases:
        target = r["max_reference_rows"] == DEFAULT_REFERENCE_ROWS
        table.append(
            (
                f"{label}: {r['current_rows']:,} current rows vs {r['reference_rows']:,} reference "
                f"(of {r['reference_rows_available']:,}), {r['columns']} columns: first / best of 3",
                f"{r['first_s']:.2f} / {r['best_s']:.2f} s wall, "
                f"{r['first_cpu_s']:.2f} / {r['best_cpu_s']:.2f} s CPU",
                f"< {TARGET_S:g} s" if target else "",
                ("yes" if r["first_cpu_s"] < TARGET_S else "**no**") if target else "",
            )
        )
        table.append(
            (
                f"{label}: drift share; HTML size; chart",
                f"{r['drift_share']:.2f} ({len(r['drifted_columns'])} columns); "
                f"{r['html_mb']:.1f} MB; {r['chart_s']:.2f} s",
            )
        )
    return table


def markdown(table: list[tuple[str, ...]]) -> str:
    lines = ["| measure | value | target | met |", "| --- | --- | --- | --- |"]
    return "\n".join([*lines, *(f"| {' | '.join((*row, '', '')[:4])} |" for row in table)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the large city")
    args = parser.parse_args()
    results: dict = {"load_avg_1_5_15m_before": os.getloadavg(), "import_s": import_seconds()}
    import evidently

    results["default"] = bench_default()
    if not args.quick:
        results["large"] = bench_large()
    results.update(
        peak_rss_gb=max_rss_gb(),
        load_avg_1_5_15m=os.getloadavg(),
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine(),
        evidently=evidently.__version__,
    )
    BENCH_DIR.mkdir(exist_ok=True)
    path = BENCH_DIR / ("drift-quick.json" if args.quick else "drift.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(rows(results)))
    print(f"\nload average (1/5/15 min): {results['load_avg_1_5_15m']}; results: {path}")


if __name__ == "__main__":
    main()
