"""The named jobs: one per step of the pipeline, so that every run (a sensor's, a schedule's,
the UI's, ``geo-busyness run``'s and the demo's) carries the name of what it did and shows under
Jobs. A city's jobs are prefixed with its key, as its assets are (and end in ``_job`` where the
name would otherwise be an asset's op name, e.g. ``regina__restaurants``)."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator

import dagster as dg

from geo_busyness.assets.deployment import ENDPOINT_KEY
from geo_busyness.assets.ingestion import UNROUTED
from geo_busyness.assets.metadata import city_key, stage_selection
from geo_busyness.core.city import City
from geo_busyness.resources.settings import DEFINITIONS_MODULE, code_location_name
from geo_busyness.retraining import TRAINING, TRAINING_RUN_TAGS, TRIGGER_TAG

TRAINING_JOB = "training_job"
DEPLOYMENT_JOB = "deployment_job"


REPOSITORY_NAME = "__repository__"
"""The one repository of a code location built from a ``Definitions``."""


def in_process_run_tags() -> dict[str, str]:
    """Tags of a run executed in this process (``geo-busyness run``, the demo): the trigger tag
    tells them from the daemon's and the UI's runs."""
    return {TRIGGER_TAG: "cli"}


@contextlib.contextmanager
def filed_under_code_location(instance: dg.DagsterInstance, job_name: str) -> Iterator[None]:
    """Runs ``execute_in_process`` creates on ``instance`` meanwhile carry the origin of
    ``job_name`` in the code location, as a run the daemon or the UI launches does: the UI files
    such a run under its job, draws it in the Overview timeline (which skips runs without an
    origin) and re-executes it through the code location.

    Private Dagster API, on purpose: ``execute_in_process`` takes no origin and nothing public
    builds one, so the instance's ``create_run_for_job`` is given it for the duration (a run
    worker process per run instead would cost seconds of imports each, ~150 runs a demo)."""
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE),
        code_location_name(),
    )
    origin = RemoteRepositoryOrigin(location, REPOSITORY_NAME).get_job_origin(job_name)
    instance.create_run_for_job = functools.partial(
        instance.create_run_for_job, remote_job_origin=origin
    )
    try:
        yield
    finally:
        del instance.create_run_for_job  # the class's method again


def ingest_job_name(city: City | None) -> str:
    """Ingestion of one day of ``city`` (the landing sensor's runs), or of the unrouted rows of
    one day's export of every city (``None``)."""
    return f"{city.key}__ingest" if city else f"{UNROUTED}__ingest"


def daily_data_job_name(city: City) -> str:
    return f"{city.key}__daily_data_job"


def restaurants_job_name(city: City) -> str:
    return f"{city.key}__restaurants_job"


def forecast_job_name(city: City) -> str:
    return f"{city.key}__forecast_job"


def city_jobs(city: City) -> list[dg.UnresolvedAssetJobDefinition]:
    """``city``'s jobs; the first is its ingestion job."""
    ingest = stage_selection("ingestion", city)
    return [
        dg.define_asset_job(
            ingest_job_name(city),
            selection=ingest,
            description=f"Ingest and validate one day of {city.name} (the landing sensor's runs).",
        ),
        dg.define_asset_job(
            daily_data_job_name(city),
            selection=ingest
            | dg.AssetSelection.assets(
                city_key(city, "hex_hourly_busyness"), city_key(city, "busyness_features")
            ),
            description=f"Ingest, validate and featurize one day of {city.name}.",
        ),
        dg.define_asset_job(
            restaurants_job_name(city),
            selection=dg.AssetSelection.assets(
                city_key(city, "restaurants"), city_key(city, "restaurant_clusters")
            ),
            description=f"Locate and cluster the restaurants of {city.name} from every day.",
        ),
        dg.define_asset_job(
            forecast_job_name(city),
            selection=dg.AssetSelection.assets(city_key(city, "busyness_forecast")),
            description=f"Forecast {city.name} for the day after a day, with its champion.",
        ),
    ]


def unrouted_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        ingest_job_name(None),
        selection=dg.AssetSelection.assets(UNROUTED),
        description="Quarantine the rows of one day's export of every city that no city takes.",
    )


def training_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        TRAINING_JOB,
        selection=stage_selection(TRAINING),
        tags=TRAINING_RUN_TAGS,
        description=(
            "For every city (or the cities a run selects): assemble the training set, train and "
            "evaluate a candidate, and promote it to champion if every blocking check passes."
        ),
    )


def deployment_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        DEPLOYMENT_JOB,
        selection=dg.AssetSelection.assets(ENDPOINT_KEY),
        description=(
            "Deploy every city's champion behind the endpoint, after its smoke check (the "
            "previous bundle keeps serving if the check fails)."
        ),
    )
