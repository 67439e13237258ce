"""The code location: one Definitions object with assets, checks, sensors, jobs and resources,
built from the city catalog (``GEO_BUSYNESS_CITIES``, else the packaged ``cities.yaml``): every
city gets its own assets (``<city>/raw_courier_pings`` ...), partitions and jobs; one endpoint
serves them all."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import warnings
from typing import Any

import dagster as dg

from geo_busyness.assets.deployment import build_endpoint, build_forecast
from geo_busyness.assets.features import build_features
from geo_busyness.assets.ingestion import build_ingestion, build_unrouted
from geo_busyness.assets.monitoring import build_monitoring
from geo_busyness.assets.training import build_training
from geo_busyness.automation import automation_sensor
from geo_busyness.checks import build_checks
from geo_busyness.core.catalog import Catalog, load_configured_catalog
from geo_busyness.core.city import City
from geo_busyness.core.redact import redact_text
from geo_busyness.jobs import city_jobs, deployment_job, training_job, unrouted_job
from geo_busyness.partitions import last_day_setting
from geo_busyness.resources.environment import build_resources
from geo_busyness.resources.settings import EXECUTOR_ENV, START_DATE_ENV
from geo_busyness.retraining import (
    build_drift_retrain_sensor,
    build_first_model_sensor,
    retrain_job,
    weekly_retrain,
)
from geo_busyness.sensors import build_landing_sensor, endpoint_health_sensor


def executor() -> dg.ExecutorDefinition:
    """In-process by default: a step is seconds of pandas work, and a process per step costs
    ~8 s of imports; runs of different days still run in parallel. ``multiprocess`` for hosts
    with many cores. ``k8s`` runs every step as its own Kubernetes Job (next to the
    K8sRunLauncher, deploy/k8s/values.yaml), so a step gets a pod sized for it (training)."""
    kind = os.environ.get(EXECUTOR_ENV, "in_process")
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "multiprocess":
        return dg.multiprocess_executor
    if kind == "k8s":
        # Imported only here: dagster_k8s pulls in the Kubernetes client.
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(
        f"{EXECUTOR_ENV} must be one of 'in_process', 'multiprocess', 'k8s', got {kind!r}"
    )


def with_first_landed_days(cities: tuple[City, ...], landing_zone) -> tuple[City, ...]:
    """``cities``, those without a catalog ``first_day`` starting at their oldest landed day
    (their own folders or an export of every city), so their partitions follow the data. The
    landing zone is read by folder names only; when it cannot be read, they keep the global
    first day: an unreachable bucket must not keep the code location from loading."""
    if all(city.first_day for city in cities):
        return cities
    try:
        with dg.build_resources({"landing_zone": landing_zone}) as built:
            folders = built.landing_zone.day_folders()
    except Exception as error:
        warnings.warn(
            f"landing zone not readable ({redact_text(str(error))}): cities without first_day "
            f"start at {START_DATE_ENV}",
            stacklevel=2,
        )
        return cities
    limit = (
        last_day_setting() or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    ).isoformat()
    found = []
    for city in cities:
        days = {
            day for day in folders.get(city.id, set()) | folders.get(None, set()) if day <= limit
        }
        valid = sorted(day for day in days if _is_day(day))
        if city.first_day is None and valid:
            city = dataclasses.replace(city, first_landed_day=dt.date.fromisoformat(valid[0]))
        found.append(city)
    return tuple(found)


def _is_day(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def build_definitions(catalog: Catalog) -> dg.Definitions:
    """Everything the code location holds, for the cities of ``catalog``."""
    resources = build_resources()
    cities = with_first_landed_days(catalog.cities, resources["landing_zone"])
    assets, checks, jobs = [], [], []
    ingest_jobs: dict[str | None, Any] = {}
    for city in cities:
        assets += [
            *build_ingestion(city, cities),
            *build_features(city),
            *build_training(city),
            build_forecast(city),
            build_monitoring(city),
        ]
        checks += build_checks(city, catalog.path)
        jobs_of_city = city_jobs(city)
        ingest_jobs[city.id] = jobs_of_city[0]
        jobs += jobs_of_city
    unrouted = build_unrouted(cities)
    ingest_jobs[None] = unrouted_job()
    endpoint, *endpoint_checks = build_endpoint(cities)
    return dg.Definitions(
        assets=[*assets, unrouted, endpoint],
        asset_checks=[*checks, *endpoint_checks],
        jobs=[*jobs, ingest_jobs[None], training_job(), retrain_job, deployment_job()],
        sensors=[
            automation_sensor,
            build_landing_sensor(cities, ingest_jobs),
            build_drift_retrain_sensor(cities),
            build_first_model_sensor(cities),
            endpoint_health_sensor,
        ],
        schedules=[weekly_retrain],
        resources=resources,
        executor=executor(),
    )


defs = build_definitions(load_configured_catalog())
