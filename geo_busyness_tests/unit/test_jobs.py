"""The code location as the code server loads it: every named job, no name taken twice."""

import dagster as dg
import pytest

from geo_busyness.core.catalog import catalog_yaml, load_catalog
from geo_busyness.definitions import build_definitions, defs
from geo_busyness.jobs import in_process_run_tags
from geo_busyness.simulate import MULTI_CITIES

pytestmark = pytest.mark.unit

SHARED_JOBS = {"unrouted_pings__ingest", "training_job", "retrain_job", "deployment_job"}


def city_job_names(key: str) -> set[str]:
    return {
        f"{key}__{job}" for job in ("ingest", "daily_data_job", "restaurants_job", "forecast_job")
    }


def test_the_packaged_code_location_loads_with_every_job():
    """What the webserver and daemon do first: a job named like an asset's op (``regina__
    restaurants``) makes the whole location fail to load, which in-process runs never notice."""
    dg.Definitions.validate_loadable(defs)
    assert {job.name for job in defs.resolve_all_job_defs()} >= city_job_names(
        "regina"
    ) | SHARED_JOBS


def test_a_catalog_of_several_cities_loads_with_each_citys_jobs(tmp_path):
    catalog = tmp_path / "cities.yaml"
    catalog.write_text(catalog_yaml(MULTI_CITIES))
    built = build_definitions(load_catalog(catalog))
    dg.Definitions.validate_loadable(built)
    names = {job.name for job in built.resolve_all_job_defs()}
    for city in MULTI_CITIES:
        assert city_job_names(city.key) <= names
    assert names >= SHARED_JOBS


def test_in_process_runs_are_filed_under_the_configured_code_location(monkeypatch):
    assert in_process_run_tags()[".dagster/repository"] == "__repository__@geo_busyness"
    monkeypatch.setenv("GEO_BUSYNESS_CODE_LOCATION", "geo-busyness")
    assert in_process_run_tags() == {
        ".dagster/repository": "__repository__@geo-busyness",
        "geo_busyness/trigger": "cli",
    }
