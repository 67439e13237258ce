"""``geo-busyness`` command: simulate a city into the landing zone, run the whole graph, or roll
the champion model back.

Nothing it prints carries a credential: URLs and error messages (a tracking URI with a
password, a presigned URL in an error) go through ``geo_busyness.core.redact`` first, and an
unexpected error's traceback is printed redacted instead of by Python.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from geo_busyness.core.redact import redact_text, redact_url
from geo_busyness.resources.settings import default_data_dir


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from error


def _yesterday() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def _add_simulation_arguments(parser: argparse.ArgumentParser, default_days: int) -> None:
    from geo_busyness.simulate import SCENARIOS

    parser.add_argument(
        "--days", type=int, default=default_days, help="number of days (default %(default)s)"
    )
    parser.add_argument(
        "--start",
        type=_date,
        default=None,
        help="first day, YYYY-MM-DD (default: so the last day is yesterday, UTC)",
    )
    parser.add_argument(
        "--pings-per-day",
        type=int,
        default=20_000,
        help="average pings per day (default %(default)s)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="baseline")
    parser.add_argument(
        "--scenario-start",
        type=_date,
        default=None,
        help="day the scenario begins (default: first day)",
    )
    parser.add_argument(
        "--dirty-share", type=float, default=0.02, help="share of dirty rows (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--city",
        dest="simulated_city",
        default=None,
        help="id of the catalog's city to simulate (default: the simulated default city, regina)",
    )


def _simulation_config(args: argparse.Namespace):
    from geo_busyness.simulate import SimulationConfig

    start = args.start or _yesterday() - dt.timedelta(days=args.days - 1)
    city = {}
    if args.simulated_city:
        from geo_busyness.core.catalog import load_configured_catalog

        city = {"city": load_configured_catalog().get(args.simulated_city)}
    return SimulationConfig(
        **city,
        start_date=start,
        days=args.days,
        pings_per_day=args.pings_per_day,
        scenario=args.scenario,
        scenario_start=args.scenario_start,
        dirty_share=args.dirty_share,
        seed=args.seed,
    )


@contextlib.contextmanager
def _resource(key: str) -> Iterator[Any]:
    """The code location's resource ``key``, initialized as in a run: ``dg.EnvVar`` fields
    (set in the ``stack`` and ``aws`` environments) resolved."""
    import dagster as dg

    from geo_busyness.definitions import defs

    with dg.build_resources({key: defs.resources[key]}) as resources:
        yield getattr(resources, key)


def cmd_simulate(args: argparse.Namespace) -> int:
    from geo_busyness.simulate import simulate

    config = _simulation_config(args)
    with _resource("landing_zone") as zone:
        existing = zone.list_files() if args.if_empty else []
        if existing:
            print(f"{zone.location('raw/')} already holds {len(existing)} files; nothing written")
            return 0
        summary = simulate(config, put=zone.write, progress=not args.quiet, city_folder=True)
    print(
        f"wrote {summary.files} files, {summary.rows:,} rows ({summary.dirty_rows:,} dirty) to {zone.location('raw/')}"
    )
    return 0


def _use_settings(cities: str | None = None, landing: str | None = None) -> None:
    """Point this process (and what it starts) at a catalog and a landing zone, before the
    definitions are built from them."""
    import os
    from pathlib import Path

    from geo_busyness.resources.settings import CITIES_ENV, LANDING_ZONE_ENV

    if cities:
        os.environ[CITIES_ENV] = str(Path(cities).expanduser().resolve())
    if landing:
        os.environ[LANDING_ZONE_ENV] = (
            landing if landing.startswith("s3://") else str(Path(landing).expanduser().resolve())
        )


def _selected_cities(catalog, wanted: list[str] | None):
    if not wanted:
        return list(catalog.cities)
    return [catalog.get(city_id) for city_id in wanted]


def _run_landing(args: argparse.Namespace, training_config: dict, heading: str) -> int:
    """Ingest the landing zone on the persistent instance, then train, forecast and deploy:
    the one code path of ``run`` and ``demo``."""
    import os

    from geo_busyness.resources.settings import LANDING_ZONE_ENV, STORAGE_ENV
    from geo_busyness.runner import dagster_home, format_landing_run, run_landing

    home = dagster_home()  # before Dagster reads DAGSTER_HOME
    import dagster as dg

    from geo_busyness.core.catalog import load_configured_catalog
    from geo_busyness.definitions import build_definitions

    catalog = load_configured_catalog()
    cities = _selected_cities(catalog, args.city)
    defs = build_definitions(catalog)
    zone = defs.resources["landing_zone"]
    print(
        f"{heading}: {', '.join(c.id for c in cities)} from "
        f"{os.environ.get(LANDING_ZONE_ENV) or zone.location('raw/')} "
        f"(catalog {catalog.path}) on the instance in {home}"
    )
    with dg.DagsterInstance.get() as instance:
        outcome = run_landing(
            defs,
            instance,
            cities,
            train=args.train,
            training_config={"ops": {"busyness_model": {"config": training_config}}},
        )
    print()
    print(format_landing_run(outcome))
    if outcome.deployment:
        deployment = outcome.deployment
        print(
            f"\nendpoint: {deployment['model_version']} serves the forecasts at "
            f"{deployment['address']} (keeps running; `uv run geo-busyness endpoint stop` "
            f"ends it). Try:\n  {deployment['try_it'].strip().strip('`').strip()}"
        )
    elif outcome.deploy_error:
        print(f"\nendpoint deployment failed: {redact_text(str(outcome.deploy_error))}")
    if not outcome.cities:
        print("geo-busyness: nothing to ingest", file=sys.stderr)
        return 1
    # Built, so that settings given as dg.EnvVar are resolved (never printed as such).
    with dg.build_resources(
        {"mlflow_tracking": defs.resources["mlflow_tracking"], "zone": zone}
    ) as built:
        tracking, landing = built.mlflow_tracking, built.zone.location("raw/")
    storage = os.environ.get(STORAGE_ENV) or str(default_data_dir() / "assets")
    print(
        f"\nWhere to look:\n"
        f"  landing zone   {landing}\n"
        f"  asset files    {storage}/<city>/<asset>/<day>.parquet "
        f"(quarantine: {storage}/<city>/quarantined_pings/)\n"
        f"  MLflow         {tracking.display_uri}\n"
        f"  Dagster UI     scripts/dev ui   (DAGSTER_HOME={home}: runs, metadata, maps and "
        "checks of this run; with the MLflow UI and the report server its links open)"
    )
    return 1 if outcome.failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    _use_settings(args.cities, args.landing)
    return _run_landing(args, {"time_budget_s": args.train_budget}, "ingesting")


def cmd_demo(args: argparse.Namespace) -> int:
    from geo_busyness.simulate import simulate

    config = _simulation_config(args)
    with _resource("landing_zone") as zone:
        print(
            f"simulating {config.days} days of {config.city.name} ({config.scenario}) into "
            f"{zone.location('raw/')}"
        )
        simulate(config, put=zone.write, progress=True, city_folder=True)
    args.city, args.train = [config.city.id], True
    return _run_landing(
        args,
        {"time_budget_s": args.train_budget, "train_poc_baseline": args.poc_baseline},
        "demo",
    )


def cmd_cities(args: argparse.Namespace) -> int:
    _use_settings(args.cities)
    from geo_busyness.core.catalog import load_configured_catalog
    from geo_busyness.partitions import first_day

    catalog = load_configured_catalog()
    print(f"{len(catalog)} cities in {catalog.path}")
    for city in catalog.cities:
        area = (
            f"polygon of {len(city.service_area)} vertices"
            if city.service_area
            else f"{city.service_radius_km:g} km radius"
        )
        print(
            f"  {city.id:<16} {city.name:<24} ({city.center_lat:.4f}, {city.center_lon:.4f}) "
            f"{area}, {city.timezone}, H3 {city.h3_resolution}, "
            f"{city.n_restaurant_clusters} clusters, days from {first_day(city)}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from geo_busyness.core.catalog import load_configured_catalog

    catalog = load_configured_catalog()
    if args.city is None and len(catalog) != 1:
        raise ValueError(f"name the city to roll back: --city one of {', '.join(catalog.ids)}")
    city = catalog.get(args.city) if args.city else catalog.cities[0]
    with _resource("mlflow_tracking") as base:
        from mlflow.exceptions import MlflowException

        tracking = base.for_city(city.id)
        try:
            before = tracking.champion()
            restored = tracking.rollback()
        except MlflowException as error:
            print(
                f"geo-busyness: rollback failed, champion unchanged (MLflow at "
                f"{tracking.display_uri}): {redact_text(str(error))}",
                file=sys.stderr,
            )
            return 1
    print(
        f"{tracking.registered_model_name}: champion moved from version {before.version} "
        f"back to version {restored.version}"
    )
    return 0


def cmd_endpoint(args: argparse.Namespace) -> int:
    with _resource("endpoint") as endpoint:
        if args.action == "stop":
            stopped = endpoint.stop()
            print("endpoint stopped" if stopped else "no endpoint was running")
            return 0
        status = endpoint.status()
    if status.serving and status.members:
        print(f"{redact_url(status.url)}: {len(status.members)} cities (since {status.started_at})")
        for city, member in sorted(status.members.items()):
            print(f"  {city:<16} {member['model_name']} version {member['model_version']}")
    elif status.serving:
        print(
            f"{redact_url(status.url)}: {status.model_name} version {status.model_version} "
            f"(since {status.started_at})"
        )
    else:
        print(
            f"nothing serves at {redact_url(status.url)}"
            + (f": {redact_text('; '.join(status.problems))}" if status.problems else "")
        )
    if status.serving and status.problems:
        print(f"  warning: {redact_text('; '.join(status.problems))}")
    for restart in getattr(status, "restarts", ()):
        outcome = f"pid {restart.get('new_pid')}" if restart["ok"] else restart.get("error", "")
        print(
            f"  {restart['at']} {restart['part']} pid {restart['pid']} {restart['reason']}: "
            f"{'restarted as ' if restart['ok'] else 'restart failed: '}{redact_text(str(outcome))}"
        )
    return 0 if status.serving else 1


def _stack_root(args: argparse.Namespace):
    from pathlib import Path

    return Path(args.root) if args.root else default_data_dir() / "stack"


def cmd_stack(args: argparse.Namespace) -> int:
    from geo_busyness.stack.local_stack import (
        ENV_FILE,
        StackConfig,
        StackError,
        down,
        running_state,
        serve_until_interrupted,
        up,
    )

    root = _stack_root(args)
    if args.action == "down":
        down(root)
        return 0
    if args.action == "status":
        state = running_state(root)
        if state is None:
            print(f"no stack runs from {root}")
            return 1
        for name, url in state.urls.items():
            print(f"{name:9} {redact_url(url)}")
        return 0
    ports = {
        "dagster": args.dagster_port,
        "mlflow": args.mlflow_port,
        "s3": args.s3_port,
        "endpoint": args.endpoint_port,
    }
    config = StackConfig(
        root=root,
        ports=ports,
        seed_days=args.seed_days,
        pings_per_day=args.pings_per_day,
        fresh=args.fresh,
    )
    print(f"starting the stack in {root} (logs in {root / 'logs'})")
    try:
        state = up(config)
    except StackError as error:
        print(f"geo-busyness: stack: {redact_text(str(error))}", file=sys.stderr)
        return 1
    env_file = root / ENV_FILE
    print(
        f"\nThe sensors ingest the seeded days, automation featurizes them, the first model is\n"
        f"trained once {args.seed_days} days are featurized, then promoted and deployed\n"
        f"(about 10 minutes; watch Runs and Asset checks in {state.urls['dagster']}).\n"
        f"Drift yesterday: source {env_file} && geo-busyness simulate --days 1 "
        f"--scenario new_district\n"
        f"Stop everything: geo-busyness stack down" + ("" if args.detach else "   (or Ctrl-C here)")
    )
    if args.detach:
        return 0
    return serve_until_interrupted(state)


def cmd_ui(args: argparse.Namespace) -> int:
    from geo_busyness.stack.local_stack import StackError
    from geo_busyness.stack.ui import run_ui

    try:
        return run_ui(args.port)
    except StackError as error:
        print(f"geo-busyness: ui: {redact_text(str(error))}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geo-busyness", description=__doc__)
    parser.add_argument("--version", action="version", version="geo-busyness 0.1.0")
    commands = parser.add_subparsers(dest="command", required=True)
    simulate_parser = commands.add_parser(
        "simulate", help="write simulated days into the landing zone"
    )
    _add_simulation_arguments(simulate_parser, default_days=14)
    simulate_parser.add_argument(
        "--if-empty", action="store_true", help="write nothing if the landing zone holds files"
    )
    simulate_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate_parser.set_defaults(handler=cmd_simulate)
    demo_parser = commands.add_parser(
        "demo", help=f"simulate days and materialize every asset (data under {default_data_dir()})"
    )
    # 28 days: the first week only feeds the 168h lags, 6 days are held out (validation, test
    # and gaps), so 21 days leave the model two weeks to learn from, about as good as the
    # 4-week same-hour mean baseline it must not lose to (measured: +0.2%; 28 days: +2.5-5%).
    _add_simulation_arguments(demo_parser, default_days=28)
    demo_parser.add_argument(
        "--train-budget",
        type=float,
        default=30.0,
        help="seconds for the model's hyperparameter search (default %(default)s)",
    )
    demo_parser.add_argument(
        "--no-poc-baseline",
        dest="poc_baseline",
        action="store_false",
        help="skip the PoC's RandomForest grid search baseline (about a minute of the demo)",
    )
    demo_parser.set_defaults(handler=cmd_demo)
    run_parser = commands.add_parser(
        "run",
        help="ingest every (city, day) of a landing zone, then train, forecast and deploy per city",
    )
    run_parser.add_argument(
        "--landing",
        help="landing zone: a directory or s3://bucket/prefix holding raw/city=<id>/dt=D/ "
        "and/or raw/dt=D/ (default: GEO_BUSYNESS_LANDING_ZONE or <data dir>/landing)",
    )
    run_parser.add_argument(
        "--cities", help="city catalog YAML (default: GEO_BUSYNESS_CITIES or the packaged one)"
    )
    run_parser.add_argument(
        "--city", action="append", help="only this city id (repeatable; default: every city)"
    )
    run_parser.add_argument(
        "--no-train",
        dest="train",
        action="store_false",
        help="ingest and featurize only: no training, forecast or deployment",
    )
    run_parser.add_argument(
        "--train-budget",
        type=float,
        default=30.0,
        help="seconds for each city's hyperparameter search (default %(default)s)",
    )
    run_parser.set_defaults(handler=cmd_run)
    cities_parser = commands.add_parser("cities", help="list the city catalog")
    cities_parser.add_argument("--cities", help="city catalog YAML (default: as for run)")
    cities_parser.set_defaults(handler=cmd_cities)
    rollback_parser = commands.add_parser(
        "rollback", help="point the champion alias back at the version it replaced"
    )
    rollback_parser.add_argument("--city", help="city id (needed when the catalog has several)")
    rollback_parser.set_defaults(handler=cmd_rollback)
    endpoint_parser = commands.add_parser(
        "endpoint", help="status of the local endpoint, or stop it"
    )
    endpoint_parser.add_argument("action", choices=("status", "stop"))
    endpoint_parser.set_defaults(handler=cmd_endpoint)
    stack_parser = commands.add_parser(
        "stack",
        help="SeaweedFS (S3), an MLflow server and Dagster on loopback: the production shape",
    )
    stack_parser.add_argument("action", choices=("up", "down", "status"))
    stack_parser.add_argument("--root", help="state directory (default: <data dir>/stack)")
    stack_parser.add_argument(
        "--detach", action="store_true", help="return once started (`stack down` stops it)"
    )
    stack_parser.add_argument("--fresh", action="store_true", help="wipe the state first")
    stack_parser.add_argument("--seed-days", type=int, default=28)
    stack_parser.add_argument("--pings-per-day", type=int, default=10_000)
    for service, port in (("dagster", 3000), ("mlflow", 5000), ("s3", 8333), ("endpoint", 8080)):
        stack_parser.add_argument(
            f"--{service}-port", type=int, default=port, help="0 picks a free port"
        )
    stack_parser.set_defaults(handler=cmd_stack)
    ui_parser = commands.add_parser(
        "ui",
        help="Dagster (webserver + daemon), the MLflow UI and the report server over the local "
        "defaults; Ctrl-C stops all three",
    )
    ui_parser.add_argument("--port", type=int, default=3000, help="Dagster's port")
    ui_parser.set_defaults(handler=cmd_ui)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"geo-busyness: error: {redact_text(str(error))}", file=sys.stderr)
        return 2
    except Exception:
        # Python would print the traceback itself, credentials in its messages included.
        print(redact_text(traceback.format_exc()), end="", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
