"""Run the asset graph end to end on a persistent local Dagster instance.

This is what ``geo-busyness run`` (and ``demo``, after simulating) does: find every (city, day)
in the landing zone, materialize every asset of each city for its days in dependency order,
then train, gate, forecast and deploy, on the same instance the UI reads (``$DAGSTER_HOME``, by
default ``<data dir>/dagster_home``), so the runs, metadata and check results are there to
look at afterwards.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import dagster as dg
import pandas as pd

from geo_busyness.assets.deployment import ENDPOINT_KEY
from geo_busyness.assets.ingestion import CITY_METADATA, UNROUTED
from geo_busyness.assets.metadata import city_key
from geo_busyness.core.city import City
from geo_busyness.jobs import (
    DEPLOYMENT_JOB,
    TRAINING_JOB,
    daily_data_job_name,
    filed_under_code_location,
    forecast_job_name,
    in_process_run_tags,
    ingest_job_name,
    restaurants_job_name,
)
from geo_busyness.partitions import day_range_problem
from geo_busyness.resources.settings import default_data_dir
from geo_busyness.retraining import training_keys

INGEST_ASSETS = (
    "raw_courier_pings",
    "clean_courier_pings",
    "quarantined_pings",
    "hex_hourly_busyness",
)
"""One run per day: a day its blocking checks refuse gets no hexagon-hours."""
FEATURE_ASSETS = ("busyness_features",)
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
"""Run config of the runner's runs: their outcome is in the summary it prints (a refused
candidate, for one, logs its failed check at ERROR)."""


def execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job: str,
    assets: list[dg.AssetKey] | None = None,
    partition: str | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of the named ``job`` of ``defs`` on ``instance`` (``assets`` of it only, with
    their checks), in this process: it shows in the UI under its job's name."""
    # execute_in_process keeps every step output in reference cycles until a full collection;
    # without one per run a 30-day load holds ~30 days of frames (BENCHMARKS.md). What is alive
    # before the run (imports, definitions, the instance: ~1M objects) is frozen meanwhile, so
    # that collection scans only the run's own objects (0.34 s a run otherwise).
    gc.freeze()
    try:
        with filed_under_code_location(instance, job):
            return defs.resolve_job_def(job).execute_in_process(
                run_config={**QUIET, **(run_config or {})},
                instance=instance,
                partition_key=partition,
                raise_on_error=False,
                asset_selection=assets,
                tags=in_process_run_tags(),
            )
    finally:
        gc.collect()
        gc.unfreeze()


@dataclass
class DaySummary:
    day: str
    raw_rows: int = 0
    clean_rows: int = 0
    quarantined_rows: int = 0
    hexagons: int = 0
    feature_rows: int = 0


@dataclass
class RunSummary:
    city: str = ""
    days: list[DaySummary] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    restaurants: int = 0
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Steps that failed because of what the failed checks refused (e.g. no restaurant left
    when every day was quarantined): reported next to those checks instead of raised."""
    seconds: float = 0.0


def catalog_cities(defs: dg.Definitions) -> list[City]:
    """The cities ``defs`` were built for, as built (first landed days included), in catalog
    order: read from their raw assets, not from whatever catalog is configured now."""
    cities = []
    for assets_def in defs.assets:
        if not isinstance(assets_def, dg.AssetsDefinition):
            continue
        for key in assets_def.keys:
            record = assets_def.metadata_by_key.get(key, {}).get(CITY_METADATA)
            if key.path[-1] == "raw_courier_pings" and record is not None:
                value = record.value if isinstance(record, dg.MetadataValue) else record
                cities.append(City.from_record(value))
    return cities


def only_city(defs: dg.Definitions) -> City:
    cities = catalog_cities(defs)
    if len(cities) != 1:
        raise ValueError(
            f"the definitions hold {len(cities)} cities ({', '.join(c.id for c in cities)}): "
            "name one"
        )
    return cities[0]


LOCAL_INSTANCE_SETTINGS = Path(__file__).with_name("dagster.local.yaml")


def prepare_instance_dir(home: Path) -> Path:
    """``home`` created, with the local run-concurrency settings unless it already has a
    ``dagster.yaml``."""
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(LOCAL_INSTANCE_SETTINGS.read_text())
    return home


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` or ``<data dir>/dagster_home``, prepared (:func:`prepare_instance_dir`)
    and exported for this process."""
    home = prepare_instance_dir(
        Path(os.environ.get("DAGSTER_HOME") or default_data_dir() / "dagster_home")
    )
    os.environ["DAGSTER_HOME"] = str(home)
    return home


ORPHANED_RUN_MESSAGE = (
    "The process of this run (pid {pid}) is gone: it was killed or crashed before the run "
    "ended. Marked failed by geo_busyness.runner.fail_orphaned_runs (Dagster's run monitoring "
    "cannot health-check a run of the default run launcher or of an in-process dg.materialize)."
)


def run_process_id(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process executing ``run_id``, from the first engine event that names
    one: ``Started process for run (pid: N)`` of a launched run's worker, ``Executing steps in
    process (pid: N)`` of an in-process run, the multiprocess executor's parent process."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return int(pid.value if isinstance(pid, dg.MetadataValue) else pid)
    return None


def _process_gone(pid: int, run_started: float) -> bool:
    """Whether no process ``pid`` that could be the run's is alive: none at all, a zombie, or
    (pid reuse) one born after the run started. Linux's /proc tells the last two; elsewhere
    only a missing pid counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:
        # fields after "(comm)": state is field 3, starttime (clock ticks after boot) field 22
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, IndexError):
        return False
    if fields[0] in ("Z", "X"):
        return True
    born = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return born > run_started + 2.0  # btime has whole seconds


def fail_orphaned_runs(
    instance: dg.DagsterInstance, log: Callable[[str], None] = print
) -> list[str]:
    """Mark failed (``instance.report_run_failed``) every run of ``instance`` still STARTED
    whose process is gone (killed, crashed, OOM-killed), so that it stops holding a slot of
    the run queue and its day's slot; their ids. Nothing else ends such a run: Dagster's run
    monitoring cannot health-check a run of the default run launcher or an in-process
    ``dg.materialize`` (the runner, the demo), and a launched run's code server only notices
    a dead worker while that server is itself alive (docs/deployment.md).

    Only for an instance on SQLite, whose runs ran on this machine (pids mean nothing across
    machines); runs whose process is unknown (no pid recorded yet) are left to run monitoring's
    ``max_runtime_seconds``."""
    # Private import, on purpose: Dagster has no public way to ask whether a run storage is
    # this machine's SQLite (pids only mean something for runs of this machine).
    from dagster._core.storage.runs import SqliteRunStorage

    if not isinstance(instance.run_storage, SqliteRunStorage):
        return []
    failed = []
    records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    for record in records:
        run = record.dagster_run
        pid = run_process_id(instance, run.run_id)
        if pid is None or pid == os.getpid() or record.start_time is None:
            continue
        if not _process_gone(pid, record.start_time):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue  # ended meanwhile (e.g. by the code server that launched it)
        instance.report_run_failed(current, ORPHANED_RUN_MESSAGE.format(pid=pid))
        failed.append(run.run_id)
        partition = run.tags.get("dagster/partition")
        log(
            f"  marked failed: run {run.run_id} ({run.job_name}"
            f"{f' [{partition}]' if partition else ''}), its process {pid} is gone"
        )
    return failed


def _latest(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(asset)
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]),
            limit=1,
        ).records
        event = records[0].event_log_entry if records else None
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def materialize_days(
    days: list[str],
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    log: Callable[[str], None] = print,
    city: City | None = None,
) -> RunSummary:
    """Materialize the data assets of ``city`` (default: the definitions' only city) for
    ``days``: ingest each day, restaurants once, then features. A day whose blocking data
    checks fail (e.g. mostly quarantined) is reported and not featurized; a day outside the
    city's partitions is refused up front, naming the setting to change. Days are ingested
    newest first: what is freshest is there first, and the freshness check tells the state the
    load ends in from the first run on."""
    built = {built.id: built for built in catalog_cities(defs)}
    city = built.get(city.id, city) if city else only_city(defs)
    outside = [problem for problem in map(partial(day_range_problem, city), days) if problem]
    if outside:
        raise ValueError("; ".join(outside))
    started = time.perf_counter()
    summary = RunSummary(city=city.id)
    warnings: dict[tuple[str, str], str | None] = {}

    def run(job: str, names: tuple[str, ...] | None, partition: str | None) -> bool:
        """Whether the run succeeded; raises on a failure that no failed check explains."""
        assets = [city_key(city, name) for name in names] if names else None
        result = execute(defs, instance, job, assets, partition)
        for evaluation in result.get_asset_check_evaluations():
            check = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            on = evaluation.partition or "all"
            if evaluation.severity == dg.AssetCheckSeverity.WARN:
                # a warning tells the state the load leaves: each check's latest verdict
                warnings[(check, on)] = (
                    None
                    if evaluation.passed
                    else f"{check} [{on}]: {evaluation.description or 'failed'}"
                )
            elif not evaluation.passed:
                summary.failed_checks.append(
                    f"{check} [{partition or on}]: {evaluation.description or 'failed'}"
                )
        # A failed blocking check is a verdict (reported above), anything else an error,
        # unless checks failed before it: then it is their consequence (no restaurant left
        # when every day was refused), reported beside them.
        failures = _step_failures(result)
        message = f"{city.id} [{partition or 'all'}]: " + "; ".join(failures)
        if failures and summary.failed_checks:
            summary.errors.append(message)
        elif failures:
            raise RuntimeError(message)
        return not failures

    for day in sorted(days, reverse=True):
        log(f"  ingest   {city.id} {day}")
        run(daily_data_job_name(city), INGEST_ASSETS, day)
    log(f"  restaurants and clusters of {city.id}")
    if run(restaurants_job_name(city), None, None):
        for day in days:
            log(f"  features {city.id} {day}")
            run(daily_data_job_name(city), FEATURE_ASSETS, day)
    summary.warned_checks = [warning for warning in warnings.values() if warning]

    for day in days:
        clean = _latest(instance, city_key(city, "clean_courier_pings"), day)
        quarantine = _latest(instance, city_key(city, "quarantined_pings"), day)
        for key, value in quarantine.items():
            if key.startswith("reason/"):
                reason = key.removeprefix("reason/")
                summary.quarantine_reasons[reason] = summary.quarantine_reasons.get(
                    reason, 0
                ) + int(value)
        summary.days.append(
            DaySummary(
                day=day,
                raw_rows=int(clean.get("raw_rows", 0)),
                clean_rows=int(clean.get("dagster/row_count", 0)),
                quarantined_rows=int(clean.get("quarantined_rows", 0)),
                hexagons=int(
                    _latest(instance, city_key(city, "hex_hourly_busyness"), day).get("hexagons", 0)
                ),
                feature_rows=int(
                    _latest(instance, city_key(city, "busyness_features"), day).get("rows", 0)
                ),
            )
        )
    summary.restaurants = int(
        _latest(instance, city_key(city, "restaurants")).get("restaurants", 0)
    )
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass
class TrainingSummary:
    """What one training run decided: the candidate's test metrics next to the baselines',
    each promotion gate's verdict, and the champion afterwards."""

    city: str = ""
    test_mae: dict[str, float] = field(default_factory=dict)
    gates: dict[str, tuple[bool, str]] = field(default_factory=dict)
    promoted: bool = False
    champion_version: str | None = None
    mlflow_run_id: str | None = None
    training_seconds: float | None = None
    poc_training_seconds: float | None = None
    error: str | None = None
    seconds: float = 0.0


def train_and_promote(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
    city: City | None = None,
) -> TrainingSummary:
    """One run of the training stage of ``city`` (default: the catalog's only city):
    training_set → busyness_model → model_evaluation → [blocking checks] → champion_model. A
    refused candidate is a normal outcome here (the summary says why and the champion stays);
    any other failure is reported in ``error``. ``run_config`` ops are named without the
    city (``{"ops": {"busyness_model": ...}}``)."""
    city = city or only_city(defs)
    started = time.perf_counter()
    log(f"  training set, candidate model, evaluation, checks, champion of {city.id}")
    ops = {
        f"{city.key}__{name}": config for name, config in (run_config or {}).get("ops", {}).items()
    }
    result = execute(
        defs, instance, TRAINING_JOB, training_keys(city), run_config={"ops": ops} if ops else None
    )
    summary = TrainingSummary(city=city.id)
    for evaluation in result.get_asset_check_evaluations():
        verdict = evaluation.metadata.get("verdict")
        summary.gates[evaluation.check_name] = (
            evaluation.passed,
            str(verdict.value) if verdict else "",
        )
    materialized = {event.asset_key.path[-1] for event in result.get_asset_materialization_events()}
    evaluation = (
        _latest(instance, city_key(city, "model_evaluation"))
        if "model_evaluation" in materialized
        else {}
    )
    summary.test_mae = {
        name: float(evaluation[key])
        for name, key in (
            ("model", "model_mae"),
            ("zero", "zero_mae"),
            ("seasonal naive", "seasonal_naive_mae"),
            ("4-week same-hour mean", "same_hour_4w_mean_mae"),
            ("yesterday", "yesterday_mae"),
            ("PoC random forest", "poc_mae"),
            ("champion before", "champion_mae"),
        )
        if key in evaluation
    }
    model = (
        _latest(instance, city_key(city, "busyness_model"))
        if "busyness_model" in materialized
        else {}
    )
    summary.mlflow_run_id = model.get("mlflow_run_id")
    summary.training_seconds = model.get("training_seconds")
    summary.poc_training_seconds = model.get("poc_training_seconds")
    champion = _latest(instance, city_key(city, "champion_model"))
    summary.promoted = "champion_model" in materialized and bool(champion.get("changed"))
    summary.champion_version = champion.get("version")
    failures = _step_failures(result)
    if failures:
        summary.error = "; ".join(failures)
    summary.seconds = time.perf_counter() - started
    return summary


def _step_failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """``step: message`` per failed step, with the innermost error rather than Dagster's
    wrapping 'Error occurred while executing'; not the failed blocking checks (verdicts, read
    from the check evaluations)."""
    failures = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
                continue
            while error is not None and error.cause is not None:
                error = error.cause
            message = error.message.strip() if error is not None else "unknown error"
            failures.append(f"{event.step_key}: {message}")
    return failures


def format_training_summary(summary: TrainingSummary) -> str:
    if summary.error and not summary.test_mae:
        return f"training failed: {summary.error}"
    lines = ["test MAE (orders per hexagon-hour):"]
    naive = summary.test_mae.get("seasonal naive")
    for name, mae in summary.test_mae.items():
        relative = (
            f"  ({1 - mae / naive:+.1%} vs seasonal naive)"
            if naive and name != "seasonal naive"
            else ""
        )
        lines.append(f"  {name:<18} {mae:.4f}{relative}")
    if summary.training_seconds is not None:
        poc = (
            f", PoC grid search {summary.poc_training_seconds:.1f} s"
            if summary.poc_training_seconds is not None
            else ""
        )
        lines.append(f"training: XGBoost {summary.training_seconds:.1f} s{poc}")
    lines.append("promotion gates:")
    for name, (passed, verdict) in summary.gates.items():
        lines.append(f"  {'PASS' if passed else 'FAIL'} {name}: {verdict}")
    if summary.promoted:
        lines.append(f"champion: version {summary.champion_version} (promoted in this run)")
    else:
        current = f"version {summary.champion_version}" if summary.champion_version else "none"
        lines.append(f"champion: unchanged ({current}); the candidate was not promoted")
    if summary.error:
        lines.append(f"errors: {summary.error}")
    lines.append(f"MLflow run: {summary.mlflow_run_id}  ({summary.seconds:.0f} s)")
    return "\n".join(lines)


def forecast_next_day(
    day: str,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    log: Callable[[str], None] = print,
    city: City | None = None,
) -> dict:
    """Materialize ``busyness_forecast[day]`` of ``city`` (the day after ``day``); its
    metadata."""
    city = city or only_city(defs)
    log(f"  forecast of {city.id} for the day after {day}")
    result = execute(defs, instance, forecast_job_name(city), partition=day)
    failures = _step_failures(result)
    if failures:
        raise RuntimeError(f"{city.id} forecast [{day}]: {'; '.join(failures)}")
    return _latest(instance, city_key(city, "busyness_forecast"), day)


def deploy_endpoint(
    defs: dg.Definitions, instance: dg.DagsterInstance, log: Callable[[str], None] = print
) -> tuple[dict, str | None]:
    """Materialize ``endpoint_deployment`` and its smoke check; its metadata and, if the run
    failed, why (the previous model, if any, keeps serving)."""
    log("  endpoint deployment and smoke check")
    result = execute(defs, instance, DEPLOYMENT_JOB)
    failures = _step_failures(result)
    metadata = _latest(instance, ENDPOINT_KEY) if result.success else {}
    return metadata, "; ".join(failures) or None


def day_range(start: dt.date, days: int) -> list[str]:
    return [(start + dt.timedelta(days=offset)).isoformat() for offset in range(days)]


def format_summary(summary: RunSummary) -> str:
    table = pd.DataFrame([vars(day) for day in summary.days])
    totals = table.drop(columns="day").sum()
    reasons = (
        ", ".join(f"{k}={v}" for k, v in sorted(summary.quarantine_reasons.items()) if v) or "none"
    )
    lines = [
        table.to_string(index=False),
        "",
        f"{len(table)} days: {totals['raw_rows']:,} raw rows = {totals['clean_rows']:,} clean "
        f"+ {totals['quarantined_rows']:,} quarantined; {summary.restaurants} restaurants; "
        f"{totals['feature_rows']:,} feature rows ({summary.seconds:.0f} s)",
        f"quarantine reasons: {reasons}",
        "failed checks: " + (", ".join(summary.failed_checks) or "none"),
        "warnings: " + (", ".join(summary.warned_checks) or "none"),
        *(["errors: " + "; ".join(summary.errors)] if summary.errors else []),
    ]
    return "\n".join(lines)


@dataclass
class LandingDays:
    """What the landing zone holds, as work: the days to ingest per city, the days of
    exports of every city (whose rows no city takes go to ``unrouted_pings``), and what was
    left out and why."""

    by_city: dict[str, list[str]] = field(default_factory=dict)
    export_days: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def landing_days(listing, cities: list[City]) -> LandingDays:
    """The (city, day)s a full ingestion of ``listing`` covers: a city's folder days, and the
    days of exports of every city for every city whose days include them. Days still in
    progress, unknown cities and days outside a city's range are left out, with the reason."""
    from geo_busyness.partitions import city_partitions, day_range_problem, latest_complete_day
    from geo_busyness.resources.landing_zone import city_day_of_key

    found = LandingDays()
    by_id = {city.id: city for city in cities}
    own: dict[str, set[str]] = {}
    export: set[str] = set()
    unknown: set[str] = set()
    for item in listing:
        located = city_day_of_key(item.key)
        if located is None:
            continue
        city_id, day = located
        if city_id is None:
            export.add(day)
        elif city_id in by_id:
            own.setdefault(city_id, set()).add(day)
        else:
            unknown.add(city_id)
    found.left_out += [
        f"raw/city={city_id}/: not a city of the catalog (or not selected)"
        for city_id in sorted(unknown)
    ]
    last = latest_complete_day(cities[0]) if cities else None
    in_progress = sorted(
        day
        for day in export | set().union(*own.values(), set())
        if last is None or day > last.isoformat()
    )
    if in_progress:
        found.left_out.append(
            f"{len(in_progress)} day(s) not complete yet ({in_progress[0]} ..): ingested once "
            "they have ended"
        )
    for city in cities:
        days = sorted(own.get(city.id, set()) | export)
        kept = [day for day in days if city_partitions(city).has_partition_key(day)]
        outside = [day for day in days if day not in kept and day not in in_progress]
        if outside:
            problem = day_range_problem(city, outside[0])
            found.left_out.append(f"{city.id}: {len(outside)} day(s) left out, e.g. {problem}")
        if kept:
            found.by_city[city.id] = kept
    found.export_days = sorted(day for day in export if day not in in_progress)
    return found


@dataclass
class CityOutcome:
    """Everything a landing run did for one city."""

    data: RunSummary
    training: TrainingSummary | None = None
    forecast: dict = field(default_factory=dict)


@dataclass
class LandingRun:
    cities: list[CityOutcome] = field(default_factory=list)
    unrouted_reasons: dict[str, int] = field(default_factory=dict)
    unrouted_rows: int = 0
    left_out: list[str] = field(default_factory=list)
    deployment: dict = field(default_factory=dict)
    deploy_error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(
            self.deploy_error
            or any(
                c.data.failed_checks or c.data.errors or (c.training and c.training.error)
                for c in self.cities
            )
        )


def run_landing(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cities: list[City],
    train: bool = True,
    training_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> LandingRun:
    """Ingest every (city, day) of the landing zone for ``cities``, then (``train``) train,
    gate and forecast each city and deploy one endpoint for all: what ``geo-busyness run`` and
    ``demo`` do."""
    # Runs left STARTED by a killed run or demo would hold the queue's slots for good.
    fail_orphaned_runs(instance, log)
    with dg.build_resources({"landing_zone": defs.resources["landing_zone"]}) as built:
        listing = built.landing_zone.list_files()
    work = landing_days(listing, cities)
    outcome = LandingRun(left_out=work.left_out)
    for note in work.left_out:
        log(f"  left out: {note}")
    for day in work.export_days:
        log(f"  unrouted rows of the export of {day}")
        result = execute(defs, instance, ingest_job_name(None), partition=day)
        failures = _step_failures(result)
        if failures:
            raise RuntimeError(f"unrouted rows [{day}]: {'; '.join(failures)}")
        metadata = _latest(instance, dg.AssetKey(UNROUTED), day)
        outcome.unrouted_rows += int(metadata.get("unrouted_rows", 0))
        for key, value in metadata.items():
            if key.startswith("reason/"):
                reason = key.removeprefix("reason/")
                outcome.unrouted_reasons[reason] = outcome.unrouted_reasons.get(reason, 0) + int(
                    value
                )
    for city in cities:
        days = work.by_city.get(city.id, [])
        if not days:
            log(f"  {city.id}: no landed day")
            continue
        log(f"{city.id}: {len(days)} day(s), {days[0]} .. {days[-1]}")
        result = CityOutcome(data=materialize_days(days, defs, instance, log, city=city))
        outcome.cities.append(result)
        if not train:
            continue
        if result.data.errors:
            log(f"  {city.id}: not trained: {'; '.join(result.data.errors)}")
            continue
        result.training = train_and_promote(defs, instance, training_config, log, city=city)
        if result.training.champion_version:
            result.forecast = forecast_next_day(days[-1], defs, instance, log, city=city)
    if train and any(c.forecast for c in outcome.cities):
        outcome.deployment, outcome.deploy_error = deploy_endpoint(defs, instance, log)
    return outcome


def format_landing_run(run: LandingRun) -> str:
    """The per-city summary ``geo-busyness run`` and ``demo`` print."""
    blocks = []
    for city in run.cities:
        lines = [f"== {city.data.city} ==", format_summary(city.data)]
        if city.training is not None:
            lines.append(format_training_summary(city.training))
        if city.forecast:
            forecast = city.forecast
            lines.append(
                f"forecast for {forecast['forecast_day']}: {forecast['rows']} hexagon-hours over "
                f"{forecast['hexagons']} hexagons, {forecast['predicted_orders']:,.0f} orders "
                f"predicted (model version {forecast['model_version']})"
            )
        blocks.append("\n".join(lines))
    if run.unrouted_rows or run.unrouted_reasons:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(run.unrouted_reasons.items()) if v)
        blocks.append(
            f"rows of exports of every city that no city takes: {run.unrouted_rows:,} "
            f"quarantined in unrouted_pings ({reasons or 'none'})"
        )
    if run.left_out:
        blocks.append("left out:\n" + "\n".join(f"  {note}" for note in run.left_out))
    return "\n\n".join(blocks)
