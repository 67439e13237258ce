"""Benchmarks: H3 indexing, the core transforms on one day, the Dagster path end to end, the model.

Each section runs in a fresh interpreter (so timings are warm-but-isolated and peak memory is
the section's own) and merges its figures into ``bench-data/results.json`` (or
``results-quick.json`` with ``--quick``); a Markdown table is printed at the end.
``BENCHMARKS.md`` records the figures and how to reproduce them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import dagster as dg
import h3
import numpy as np
import pandas as pd

from geo_busyness.core import geo
from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.features import (
    TARGET_COLUMN,
    busyness_features,
    cluster_restaurants,
    feature_columns,
    hex_hourly_busyness,
    restaurant_sightings,
    restaurants_from_sightings,
)
from geo_busyness.core.model import (
    SplitConfig,
    TrainedModel,
    TrainingConfig,
    metrics_table,
    predict,
    seasonal_naive_predict,
    time_split,
    train_busyness_model,
    train_poc_baseline,
)
from geo_busyness.core.schema import (
    UnparseableFileError,
    read_raw_file,
    unparseable_file_rows,
    validate_pings,
)
from geo_busyness.definitions import defs
from geo_busyness.resources.environment import local_resources
from geo_busyness.runner import day_range, materialize_days
from geo_busyness.simulate import SimulationConfig, simulate, simulate_day, simulated_city

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench-data"
START = dt.date(2026, 10, 1)
HISTORY_DAYS = 9  # the target day plus the 8 days busyness_features looks back on
CORE_TARGET_S = 3.0
MEMORY_TARGET_GB = 4.0
GB = 1e9
# Model goals from the issue: test MAE vs seasonal naive, training time vs the PoC's grid
# search, and the time to train on about a million feature rows.
MODEL_IMPROVEMENT_TARGET = 0.20
MODEL_SPEEDUP_TARGET = 5.0
MODEL_LARGE_TARGET_S = 60.0
# The default city has ~30 active cells at resolution 7 (~720 feature rows a day), so a
# million rows would take almost four years of days. A bigger city instead: the same centre
# and service area at resolution 9, ten times the restaurants and couriers and 1M pings a day
# (the data-path benchmarks' volume) give ~1,500 active cells, ~35k feature rows a day.
LARGE_CITY = replace(DEFAULT_CITY, h3_resolution=9)
LARGE_SIMULATION = {"n_restaurants": 1_200, "n_couriers": 2_500}


def timed(function: Callable, *args):
    """(result, wall seconds, CPU seconds of every thread of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def best_of(function: Callable, *args, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs (call it once beforehand to warm up)."""
    return min(timed(function, *args)[1] for _ in range(repeat))


def max_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


class RssSampler(threading.Thread):
    """Samples VmRSS from /proc/self/status and keeps the peak of the current phase."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_kib, self._done = interval, 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak_kib = max(self.peak_kib, _vm_rss_kib())

    def phase_peak_gb(self) -> float:
        """Peak since the previous call, in GB, then start a new phase."""
        peak, self.peak_kib = max(self.peak_kib, _vm_rss_kib()), 0
        return peak * 1024 / GB

    def stop(self) -> None:
        self._done.set()
        self.join()


def _vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_h3(points: int) -> dict:
    """geo.cells_for (h3ronpy) against a list comprehension over h3, on points in the city."""
    city = DEFAULT_CITY
    rng = np.random.default_rng(0)
    lat = city.center_lat + rng.uniform(-0.15, 0.15, points)
    lon = city.center_lon + rng.uniform(-0.25, 0.25, points)
    res = city.h3_resolution

    def loop() -> np.ndarray:
        cells = [h3.str_to_int(h3.latlng_to_cell(a, b, res)) for a, b in zip(lat, lon, strict=True)]
        return np.array(cells, dtype="uint64")

    vectorized, expected = geo.cells_for(lat, lon, res), loop()  # also the warm-up runs
    assert np.array_equal(vectorized, expected), "h3ronpy and h3 disagree"
    fast, slow = best_of(geo.cells_for, lat, lon, res), best_of(loop)
    return {
        "points": points,
        "resolution": res,
        "agree": True,
        "h3ronpy_points_per_s": points / fast,
        "h3_loop_points_per_s": points / slow,
        "speedup": slow / fast,
    }


def ingest(files: dict[str, bytes]) -> pd.DataFrame:
    """The raw_courier_pings asset without Dagster: every file of the day as text rows."""
    frames = []
    for name, content in files.items():
        try:
            frames.append(read_raw_file(name, content))
        except UnparseableFileError as error:
            frames.append(unparseable_file_rows(name, content, str(error)))
    return pd.concat(frames, ignore_index=True)


def bench_core(pings_per_day: int) -> dict:
    """One day through the core functions, after 8 days of history (timed on the last day)."""
    config = SimulationConfig(pings_per_day=pings_per_day, start_date=START)
    city, res = config.city, config.city.h3_resolution
    days = day_range(START, HISTORY_DAYS)
    out: dict = {"pings_per_day": pings_per_day}

    def step(name: str, function: Callable, *args):
        """Run and record wall and CPU seconds (a later day overwrites an earlier one)."""
        result, out[f"{name}_s"], out[f"{name}_cpu_s"] = timed(function, *args)
        return result

    hourly, sightings = {}, {}
    for day in days:  # the earlier days build history and warm every code path up
        files = step("simulate_day", simulate_day, config, dt.date.fromisoformat(day))
        raw = step("read_raw_file", ingest, files)
        del files
        result = step("validate_pings", validate_pings, raw, city, day)
        out["raw_rows"], clean = len(raw), result.clean
        del raw, result
        hourly[day] = step("hex_hourly_busyness", hex_hourly_busyness, clean, res)
        sightings[day] = step("restaurant_sightings", restaurant_sightings, clean)
    restaurants = step("restaurants_from_sightings", restaurants_from_sightings, sightings, res)
    clusters = step(
        "cluster_restaurants", cluster_restaurants, restaurants, city.n_restaurant_clusters
    )
    features = step("busyness_features", busyness_features, hourly, days[-1], clusters, city)
    for unit in ("s", "cpu_s"):
        ingestion = out[f"read_raw_file_{unit}"] + out[f"validate_pings_{unit}"]
        to_features = out[f"hex_hourly_busyness_{unit}"] + out[f"busyness_features_{unit}"]
        out[f"ingestion_{unit}"] = ingestion
        out[f"clean_to_features_{unit}"] = to_features
        out[f"validate_to_features_{unit}"] = out[f"validate_pings_{unit}"] + to_features
    out.update(
        clean_rows=len(clean),
        hourly_rows=len(hourly[days[-1]]),
        feature_rows=len(features),
        peak_rss_gb=max_rss_gb(),
    )
    return out


def bench_e2e(days: int, pings_per_day: int) -> dict:
    """Simulate ``days`` into a landing zone, then materialize them all through Dagster."""
    root = Path(tempfile.mkdtemp(prefix="e2e-", dir=BENCH_DIR))
    sampler = RssSampler()
    sampler.start()
    try:
        landing = local_resources(root)["landing_zone"]
        config = SimulationConfig(start_date=START, days=days, pings_per_day=pings_per_day)
        simulated, simulate_s, _ = timed(simulate, config, landing.write, False)
        simulate_peak = sampler.phase_peak_gb()
        bench_defs = dg.Definitions(
            assets=defs.assets,
            asset_checks=defs.asset_checks,
            resources=local_resources(root),
        )
        steps: list[tuple[str, float]] = []
        with dg.instance_for_test() as instance:
            summary, run_s, run_cpu = timed(
                materialize_days,
                day_range(START, days),
                bench_defs,
                instance,
                lambda message: steps.append((message.split()[0].rstrip(","), time.perf_counter())),
            )
        steps.append(("end", time.perf_counter()))
        materialize_peak = sampler.phase_peak_gb()
        landing_gb, assets_gb = (_disk_gb(root / part) for part in ("landing", "assets"))
    finally:
        sampler.stop()
        shutil.rmtree(root, ignore_errors=True)
    durations: dict[str, list[float]] = {}
    for (step, began), (_, ended) in pairwise(steps):
        durations.setdefault(step, []).append(ended - began)
    assert not summary.failed_checks, summary.failed_checks
    return {
        "days": days,
        "pings_per_day": pings_per_day,
        "raw_rows": simulated.rows,
        "clean_rows": sum(day.clean_rows for day in summary.days),
        "landing_gb": landing_gb,
        "assets_gb": assets_gb,
        "simulate_s": simulate_s,
        "materialize_s": run_s,
        "materialize_cpu_s": run_cpu,
        "ingest_day_s_median": float(np.median(durations["ingest"])),
        "restaurants_s": durations["restaurants"][0],
        "features_day_s_median": float(np.median(durations["features"])),
        "per_day_s": run_s / days,
        "simulate_peak_rss_gb": simulate_peak,
        "materialize_peak_rss_gb": materialize_peak,
        "peak_rss_gb": max_rss_gb(),
    }


def simulated_features(config: SimulationConfig) -> pd.DataFrame:
    """busyness_features of every simulated day but the first (which has no history), built
    with the same core functions as the Dagster assets, dirty files and rows included."""
    return pd.concat(simulated_city(config).features.values(), ignore_index=True)


def bench_model(days: int, large_days: int, large_pings_per_day: int) -> dict:
    """(a) Holdout metrics and training time of the XGBoost model, seasonal naive and the PoC
    on the default city at the simulator's default volume; (b) training time on ~1M rows.

    Both use the default ``SplitConfig`` and ``TrainingConfig`` (the platform's settings).
    """
    out: dict = {"load_avg_1_5_15m_before": os.getloadavg()}
    config = SimulationConfig(start_date=START, days=days)
    features, out["features_s"], _ = timed(simulated_features, config)
    names = feature_columns(config.city.n_restaurant_clusters)
    split = time_split(features, SplitConfig())
    trained, out["xgboost_s"], out["xgboost_cpu_s"] = timed(
        train_busyness_model, split, names, TrainingConfig()
    )
    (poc, _), out["poc_s"], out["poc_cpu_s"] = timed(train_poc_baseline, split, names)
    table = metrics_table(
        split.test[TARGET_COLUMN],
        {
            "xgboost": predict(trained, split.test, names),
            "seasonal_naive": seasonal_naive_predict(split.test),
            "poc": poc.predict(split.test[names]),
        },
    )
    out.update(
        days=days,
        pings_per_day=config.pings_per_day,
        rows={name: len(getattr(split, name)) for name in ("train", "validation", "test")},
        metrics=table.to_dict(orient="index"),
        xgboost=_search_summary(trained),
        poc_best_params=poc.best_params_,
    )

    large = SimulationConfig(
        city=LARGE_CITY,
        start_date=START,
        days=large_days,
        pings_per_day=large_pings_per_day,
        **LARGE_SIMULATION,
    )
    features, out["large_features_s"], _ = timed(simulated_features, large)
    names = feature_columns(LARGE_CITY.n_restaurant_clusters)
    split = time_split(features, SplitConfig())
    del features
    trained, out["large_xgboost_s"], out["large_xgboost_cpu_s"] = timed(
        train_busyness_model, split, names, TrainingConfig()
    )
    # For scale: one fit of XGBoost's defaults on every train row, with no deadline.
    unbounded = TrainingConfig(
        objectives=("count:poisson",), n_trials=1, time_budget_s=3600, search_rows=len(split.train)
    )
    defaults, out["large_defaults_s"], out["large_defaults_cpu_s"] = timed(
        train_busyness_model, split, names, unbounded
    )
    large_table = metrics_table(
        split.test[TARGET_COLUMN],
        {
            "xgboost": predict(trained, split.test, names),
            "defaults": predict(defaults, split.test, names),
            "naive": seasonal_naive_predict(split.test),
        },
    )
    out.update(
        large_days=large_days,
        large_pings_per_day=large_pings_per_day,
        large_cells=int(split.train["h3_cell"].nunique()),
        large_rows={name: len(getattr(split, name)) for name in ("train", "validation", "test")},
        large_xgboost=_search_summary(trained),
        large_defaults=_search_summary(defaults),
        large_test_mae=large_table["mae"].to_dict(),
        peak_rss_gb=max_rss_gb(),
    )
    return out


def _search_summary(trained: TrainedModel) -> dict:
    """The winner, how many trials ran, how the refit stopped, and the whole search log."""
    search = [entry for entry in trained.search_log if entry["phase"] == "search"]
    refits = [entry for entry in trained.search_log if entry["phase"] == "refit"]
    return {
        "objective": trained.objective,
        "params": trained.params,
        "best_iteration": trained.best_iteration,
        "validation_mae": trained.validation_mae,
        "seconds": trained.seconds,
        "trials": len(search),
        "search_s": sum(entry["seconds"] for entry in search),
        "refit": refits[0] if refits else None,
        "search_log": trained.search_log,
    }


def machine() -> dict:
    """CPU count and model, RAM and Python version, from /proc on Linux."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
    )
    ram_kib = int(Path("/proc/meminfo").read_text().split()[1])  # first line is MemTotal
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": ram_kib * 1024 / GB,
        "python": platform.python_version(),
    }


def _disk_gb(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / GB


def rows(results: dict) -> list[tuple[str, ...]]:
    """(measure, value) or (measure, value, target, met) rows for the Markdown table."""
    table: list[tuple[str, ...]] = []
    if h := results.get("h3"):
        n = f"{h['points']:,} points, res {h['resolution']}"
        speedup = f"{h['speedup']:.1f}x, agree={h['agree']}"
        table += [
            (f"h3: `geo.cells_for` (h3ronpy), {n}", f"{h['h3ronpy_points_per_s'] / 1e6:.2f} M/s"),
            (
                f"h3: `[h3.latlng_to_cell(...) ...]`, {n}",
                f"{h['h3_loop_points_per_s'] / 1e6:.2f} M/s",
            ),
            ("h3: speed-up, exact agreement", speedup, "4-5x, agree", _met(h["speedup"] >= 4)),
        ]
    if c := results.get("core"):
        met = _met(c["clean_to_features_cpu_s"] < CORE_TARGET_S)
        table += [
            (f"core: `simulate_day` ({c['raw_rows']:,} raw rows)", _wall_cpu(c, "simulate_day")),
            ("core: ingestion: `read_raw_file`, all files", _wall_cpu(c, "read_raw_file")),
            (
                f"core: ingestion: `validate_pings` ({c['clean_rows']:,} clean)",
                _wall_cpu(c, "validate_pings"),
            ),
            ("core: `hex_hourly_busyness`", _wall_cpu(c, "hex_hourly_busyness")),
            (
                f"core: `busyness_features`, 8 days history ({c['feature_rows']:,} rows)",
                _wall_cpu(c, "busyness_features"),
            ),
            (
                "core: **clean → hex_hourly → features**",
                _wall_cpu(c, "clean_to_features"),
                f"< {CORE_TARGET_S:g} s CPU",
                met,
            ),
            ("core: validate → hex_hourly → features", _wall_cpu(c, "validate_to_features")),
            ("core: `restaurant_sightings` (1 day)", _wall_cpu(c, "restaurant_sightings")),
            (
                "core: `restaurants_from_sightings` (9 days)",
                _wall_cpu(c, "restaurants_from_sightings"),
            ),
            ("core: `cluster_restaurants`", _wall_cpu(c, "cluster_restaurants")),
            ("core: peak RSS of the section", f"{c['peak_rss_gb']:.2f} GB"),
        ]
    if e := results.get("e2e"):
        per_day = (e["ingest_day_s_median"], e["features_day_s_median"], e["per_day_s"])
        table += [
            (
                f"e2e: simulate {e['days']} days x {e['pings_per_day']:,} pings",
                f"{e['simulate_s']:.0f} s",
            ),
            (
                f"e2e: `materialize_days` ({e['raw_rows']:,} raw rows)",
                f"{e['materialize_s']:.0f} s wall / {e['materialize_cpu_s']:.0f} s CPU",
            ),
            (
                "e2e: per day: ingest run (median) / features run (median) / all",
                " / ".join(f"{v:.1f}" for v in per_day) + " s",
            ),
            ("e2e: restaurants + clusters + freshness run", f"{e['restaurants_s']:.1f} s"),
            (
                "e2e: landing zone / asset storage on disk",
                f"{e['landing_gb']:.2f} / {e['assets_gb']:.2f} GB",
            ),
            (
                "e2e: peak RSS simulating / materializing (sampled)",
                f"{e['simulate_peak_rss_gb']:.2f} / {e['materialize_peak_rss_gb']:.2f} GB",
            ),
            (
                "e2e: **peak RSS of the process** (ru_maxrss)",
                f"{e['peak_rss_gb']:.2f} GB",
                f"< {MEMORY_TARGET_GB:g} GB",
                _met(e["peak_rss_gb"] < MEMORY_TARGET_GB),
            ),
        ]
    if m := results.get("model"):
        table += _model_rows(m)
    return table


def _model_rows(m: dict) -> list[tuple[str, ...]]:
    metrics, x, large = m["metrics"], m["xgboost"], m["large_xgboost"]
    rows = m["rows"]
    improvement = 1 - metrics["xgboost"]["mae"] / metrics["seasonal_naive"]["mae"]
    vs_poc = 1 - metrics["xgboost"]["mae"] / metrics["poc"]["mae"]
    speedup, cpu_speedup = m["poc_s"] / m["xgboost_s"], m["poc_cpu_s"] / m["xgboost_cpu_s"]
    large_rows = sum(m["large_rows"].values())
    large_mae = m["large_test_mae"]
    large_naive = 1 - large_mae["xgboost"] / large_mae["naive"]
    refit = large["refit"]
    defaults = m["large_defaults"]["search_log"][0]
    table = [
        (
            f"model: default city, {m['days']} days x {m['pings_per_day']:,} pings: "
            "train / validation / test rows",
            " / ".join(f"{rows[k]:,}" for k in ("train", "validation", "test")),
        ),
    ]
    labels = {
        "xgboost": f"XGBoost (`{x['objective']}`, {x['trials']} trials)",
        "seasonal_naive": "seasonal naive (lag 168h)",
        "poc": "PoC RandomForest + GridSearchCV",
    }
    for name, label in labels.items():
        values = metrics[name]
        table.append(
            (
                f"model: test MAE / RMSE / R² / Poisson deviance: {label}",
                " / ".join(f"{values[k]:.3f}" for k in ("mae", "rmse", "r2", "poisson_deviance")),
            )
        )
    table += [
        (
            "model: **test MAE below seasonal naive**",
            f"{improvement:.1%}",
            f">= {MODEL_IMPROVEMENT_TARGET:.0%}",
            _met(improvement >= MODEL_IMPROVEMENT_TARGET),
        ),
        ("model: **test MAE below the PoC**", f"{vs_poc:.1%}", "> 0%", _met(vs_poc > 0)),
        (
            "model: training: `train_busyness_model` / PoC grid (cv=5, 40 fits + refit)",
            f"{m['xgboost_s']:.1f} / {m['poc_s']:.1f} s wall, "
            f"{m['xgboost_cpu_s']:.1f} / {m['poc_cpu_s']:.1f} s CPU",
        ),
        (
            "model: **training speed-up vs the PoC** (wall; CPU)",
            f"{speedup:.1f}x; {cpu_speedup:.1f}x",
            f">= {MODEL_SPEEDUP_TARGET:g}x",
            _met(speedup >= MODEL_SPEEDUP_TARGET),
        ),
        (
            f"model: large city (res 9, {m['large_cells']:,} cells), {m['large_days']} days x "
            f"{m['large_pings_per_day']:,} pings: rows; simulate → features",
            f"{large_rows:,}; {m['large_features_s']:.0f} s",
        ),
        (
            f"model: **`train_busyness_model`, {large_rows / 1e6:.2f}M feature rows** "
            f"({m['large_rows']['train']:,} train)",
            f"{m['large_xgboost_s']:.1f} s wall / {m['large_xgboost_cpu_s']:.1f} s CPU",
            f"< {MODEL_LARGE_TARGET_S:g} s",
            _met(m["large_xgboost_s"] < MODEL_LARGE_TARGET_S),
        ),
        (
            "model: large: search trials (on a sample) / refit on all rows stopped by",
            f"{large['trials']} trials, {large['search_s']:.1f} s / "
            + (
                f"{refit['rounds']} rounds, {refit['stopped_by']}, {refit['seconds']:.1f} s"
                if refit
                else "no refit (searched on all train rows)"
            ),
        ),
        (
            "model: large: validation MAE; test MAE below seasonal naive",
            f"{large['validation_mae']:.3f} (`{large['objective']}`); {large_naive:.1%}",
        ),
        (
            "model: large, for scale: XGBoost defaults on all train rows, no deadline",
            f"{m['large_defaults_s']:.1f} s wall / {m['large_defaults_cpu_s']:.1f} s CPU, "
            f"{defaults['rounds']} rounds; test MAE below naive "
            f"{1 - large_mae['defaults'] / large_mae['naive']:.1%}",
        ),
    ]
    return table


def _wall_cpu(section: dict, name: str) -> str:
    return f"{section[name + '_s']:.2f} s wall / {section[name + '_cpu_s']:.2f} s CPU"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(table: list[tuple[str, ...]]) -> str:
    lines = ["| measure | value | target | met |", "| --- | --- | --- | --- |"]
    return "\n".join([*lines, *(f"| {' | '.join((*row, '', '')[:4])} |" for row in table)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small smoke sizes (seconds, not minutes)"
    )
    parser.add_argument("--only", choices=("h3", "core", "e2e", "model"), help="run one section")
    parser.add_argument("--days", type=int, help="e2e days (default 30, quick 3)")
    parser.add_argument(
        "--pings-per-day", type=int, help="core and e2e pings per day (default 1M, quick 20k)"
    )
    args = parser.parse_args()
    pings = args.pings_per_day or (20_000 if args.quick else 1_000_000)
    sections = {
        "h3": (bench_h3, (100_000 if args.quick else 1_000_000,)),
        "core": (bench_core, (pings,)),
        "e2e": (bench_e2e, (args.days or (3 if args.quick else 30), pings)),
        # Not --days/--pings-per-day: (a) is the default city at the simulator's default volume.
        "model": (bench_model, (10, 10, 100_000) if args.quick else (28, 30, 1_000_000)),
    }
    if args.only:
        sections = {args.only: sections[args.only]}

    BENCH_DIR.mkdir(exist_ok=True)
    path = BENCH_DIR / ("results-quick.json" if args.quick else "results.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    run = {}
    for name, (function, section_args) in sections.items():
        print(f"running {name}{section_args} ...", flush=True)
        # A fresh interpreter per section: no warm caches or memory peaks carried over.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            run[name] = pool.submit(function, *section_args).result()
        run[name]["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        # Other work on a shared machine inflates wall (not CPU) time: keep the load with it.
        run[name]["load_avg_1_5_15m"] = os.getloadavg()
        results.update(run, machine=machine())
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(rows(run)))
    for name, section in run.items():
        print(f"load average after {name} (1/5/15 min): {section['load_avg_1_5_15m']}")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
