"""The code location as the code server loads it: every named job, no name taken twice."""

import dagster as dg
import pytest

from geo_busyness.core.catalog import catalog_yaml, load_catalog
from geo_busyness.definitions import build_definitions, defs
from geo_busyness.jobs import filed_under_code_location, in_process_run_tags
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
    """What the UI needs to show a run of ``geo-busyness run`` or the demo under its job and
    in the Overview timeline: the job's origin in the code location, as a launched run has."""

    @dg.asset
    def tiny() -> int:
        return 1

    small = dg.Definitions(assets=[tiny], jobs=[dg.define_asset_job("tiny_job")])
    job = small.resolve_job_def("tiny_job")
    monkeypatch.setenv("GEO_BUSYNESS_CODE_LOCATION", "geo-busyness")
    with dg.DagsterInstance.ephemeral() as instance:
        with filed_under_code_location(instance, "tiny_job"):
            filed = job.execute_in_process(instance=instance, tags=in_process_run_tags()).run_id
        plain = job.execute_in_process(instance=instance).run_id
        run = instance.get_run_by_id(filed)
        origin = run.remote_job_origin
        assert (origin.location_name, origin.repository_origin.repository_name) == (
            "geo-busyness",
            "__repository__",
        )
        assert origin.job_name == "tiny_job"
        assert run.tags["geo_busyness/trigger"] == "cli"
        # how a job's page finds its runs
        on_the_jobs_page = instance.get_runs(
            dg.RunsFilter(
                job_name="tiny_job", tags={".dagster/repository": "__repository__@geo-busyness"}
            )
        )
        assert [r.run_id for r in on_the_jobs_page] == [filed]
        # afterwards the instance creates runs as before
        assert instance.get_run_by_id(plain).remote_job_origin is None
