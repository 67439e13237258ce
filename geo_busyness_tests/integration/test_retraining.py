"""The drift sensor requests a retrain of a city exactly when a drift report of that city
passes the thresholds; the first-model sensor trains each city's first model once."""

import dagster as dg
import pytest

from geo_busyness.core.city import City
from geo_busyness.definitions import defs
from geo_busyness.resources.reports import DriftPolicy
from geo_busyness.resources.tracking import Champion, MlflowTracking
from geo_busyness.retraining import (
    CITY_TAG,
    FIRST_MODEL_MIN_DAYS,
    TRIGGER_TAG,
    build_drift_retrain_sensor,
    build_first_model_sensor,
    retrain_job,
    training_keys,
    weekly_retrain,
)

pytestmark = pytest.mark.integration

DAYS = dg.StaticPartitionsDefinition(["2026-11-01", "2026-11-02"])
REGINA = City()
SASKATOON = City(name="Saskatoon, SK", id="saskatoon", center_lat=52.1332, center_lon=-106.67)
CITIES = (REGINA, SASKATOON)
drift_retrain_sensor = build_drift_retrain_sensor(CITIES)
first_model_sensor = build_first_model_sensor(CITIES)


def regina_training_keys() -> list[dg.AssetKey]:
    return [
        dg.AssetKey(["regina", name])
        for name in ("training_set", "busyness_model", "model_evaluation", "champion_model")
    ]


def report_with(drift_share: float, error_ratio: float | None = None, city: City = REGINA):
    """A stand-in drift_report materialization of ``city`` carrying the metadata the sensor
    reads."""

    @dg.asset(key=[city.key, "drift_report"], partitions_def=DAYS)
    def stand_in() -> dg.MaterializeResult:
        metadata = {"drift_share": drift_share}
        if error_ratio is not None:
            metadata["error_ratio"] = error_ratio
        return dg.MaterializeResult(metadata=metadata)

    return stand_in


def tick(instance, cursor=None, sensor=drift_retrain_sensor):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"drift_policy": DriftPolicy()}
    ) as context:
        result = sensor(context)
        return result, context.cursor


def only_request(result) -> dg.RunRequest:
    """The sensor returns a list of per-city requests; here exactly one."""
    assert isinstance(result, list), result
    [request] = result
    assert isinstance(request, dg.RunRequest)
    return request


def test_drift_past_the_threshold_requests_one_retrain():
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize([report_with(0.8)], instance=instance, partition_key="2026-11-02")
        result, cursor = tick(instance)
        request = only_request(result)
        assert request.tags[TRIGGER_TAG] == "drift"
        assert request.tags["geo_busyness/drift_day"] == "2026-11-02"
        assert request.tags[CITY_TAG] == "regina"
        assert list(request.asset_selection) == regina_training_keys()
        again, _ = tick(instance, cursor)  # the same report is not acted on twice
        assert isinstance(again, dg.SkipReason)


def test_drift_of_one_city_retrains_that_city_only():
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize([report_with(0.1)], instance=instance, partition_key="2026-11-02")
        dg.materialize(
            [report_with(0.8, city=SASKATOON)], instance=instance, partition_key="2026-11-02"
        )
        result, cursor = tick(instance)
        request = only_request(result)
        assert request.tags[CITY_TAG] == "saskatoon"
        assert list(request.asset_selection) == training_keys(SASKATOON)
        assert all(key.path[0] == "saskatoon" for key in request.asset_selection)

        # later: Regina drifts too, Saskatoon's new report does not: Regina only
        dg.materialize([report_with(0.9)], instance=instance, partition_key="2026-11-01")
        dg.materialize(
            [report_with(0.05, city=SASKATOON)], instance=instance, partition_key="2026-11-01"
        )
        later, _ = tick(instance, cursor)
        request = only_request(later)
        assert request.tags[CITY_TAG] == "regina"
        assert list(request.asset_selection) == regina_training_keys()


def test_drift_of_both_cities_requests_one_retrain_each():
    with dg.DagsterInstance.ephemeral() as instance:
        for city in CITIES:
            dg.materialize(
                [report_with(0.8, city=city)], instance=instance, partition_key="2026-11-02"
            )
        result, _ = tick(instance)
        assert isinstance(result, list)
        assert {r.tags[CITY_TAG]: list(r.asset_selection) for r in result} == {
            city.id: training_keys(city) for city in CITIES
        }
        assert len({r.run_key for r in result}) == 2


def test_the_retrain_selection_is_a_valid_subset_of_the_retrain_job():
    """What the sensor requests runs in retrain_job of the real definitions."""
    [regina] = [c for c in CITIES if c.id == "regina"]
    job = defs.resolve_job_def(retrain_job.name)
    assert set(training_keys(regina)) <= set(job.asset_layer.executable_asset_keys)
    sensor = defs.get_sensor_def("drift_retrain_sensor")
    assert sensor.job_name == retrain_job.name


def test_error_growth_alone_requests_a_retrain():
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize(
            [report_with(0.1, error_ratio=2.0)], instance=instance, partition_key="2026-11-01"
        )
        result, _ = tick(instance)
        assert only_request(result).tags[CITY_TAG] == "regina"


def test_small_drift_is_skipped_with_the_reason():
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize(
            [report_with(0.15, error_ratio=1.1)], instance=instance, partition_key="2026-11-01"
        )
        result, _ = tick(instance)
        assert isinstance(result, dg.SkipReason)
        assert "15% of the features drifted (limit 20%)" in result.skip_message
        assert "regina" in result.skip_message


def test_only_the_newest_report_counts_on_the_first_tick():
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize([report_with(0.9)], instance=instance, partition_key="2026-11-01")
        dg.materialize([report_with(0.1)], instance=instance, partition_key="2026-11-02")
        result, _ = tick(instance)
        assert isinstance(result, dg.SkipReason)  # the old drifted report is history


def test_retraining_is_also_weekly():
    assert weekly_retrain.job_name == retrain_job.name
    assert weekly_retrain.cron_schedule == "0 3 * * 1"


FEATURE_DAYS = dg.DailyPartitionsDefinition(start_date="2026-10-01", end_date="2026-11-15")


def featurize(instance, days: int, city: City = REGINA) -> None:
    """Record busyness_features materializations of the first ``days`` days of ``city`` (the
    sensor only counts materialized days and looks at the newest one)."""
    for key in FEATURE_DAYS.get_partition_keys()[:days]:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=[city.key, "busyness_features"], partition=key)
        )


class RegistryWithChampion(MlflowTracking):
    """A registry where the cities in ``with_champion`` (comma-separated ids) have a champion
    (version 3)."""

    with_champion: str = "regina,saskatoon"

    def for_city(self, city_id: str) -> MlflowTracking:
        if city_id not in self.with_champion.split(","):
            return super().for_city(city_id)
        return RegistryWithChampion(
            tracking_uri=self.tracking_uri,
            registered_model_name=f"{self.registered_model_name}-{city_id}",
        )

    def champion(self) -> Champion | None:
        return Champion(
            version="3", run_id="run", model_uri="models:/m@champion", previous_version=None
        )


def first_model_tick(instance, tracking: MlflowTracking):
    with dg.build_sensor_context(
        instance=instance, resources={"mlflow_tracking": tracking}
    ) as context:
        return first_model_sensor(context)


@pytest.fixture
def empty_registry(tmp_path) -> MlflowTracking:
    return MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_first_model_waits_for_a_full_training_window(empty_registry):
    with dg.DagsterInstance.ephemeral() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS - 1)
        result = first_model_tick(instance, empty_registry)
        assert isinstance(result, dg.SkipReason)
        assert (
            f"regina: {FIRST_MODEL_MIN_DAYS - 1} of {FIRST_MODEL_MIN_DAYS} days"
            in result.skip_message
        )
        assert f"saskatoon: 0 of {FIRST_MODEL_MIN_DAYS} days" in result.skip_message


def test_first_model_is_requested_once_the_backlog_is_featurized(empty_registry):
    with dg.DagsterInstance.ephemeral() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS)
        result = only_request(first_model_tick(instance, empty_registry))
        assert result.tags[TRIGGER_TAG] == "first_model"
        assert result.tags[CITY_TAG] == "regina"
        assert list(result.asset_selection) == regina_training_keys()
        again = only_request(first_model_tick(instance, empty_registry))
        assert again.run_key == result.run_key  # same features: deduplicated by the run key
        featurize(instance, 1)  # a day re-featurized: a refused first model may be retried
        assert only_request(first_model_tick(instance, empty_registry)).run_key != result.run_key


def test_first_model_of_each_city_is_its_own_request(empty_registry):
    with dg.DagsterInstance.ephemeral() as instance:
        for city in CITIES:
            featurize(instance, FIRST_MODEL_MIN_DAYS, city)
        result = first_model_tick(instance, empty_registry)
        assert isinstance(result, list)
        assert {r.tags[CITY_TAG]: list(r.asset_selection) for r in result} == {
            city.id: training_keys(city) for city in CITIES
        }
        assert len({r.run_key for r in result}) == 2


def test_first_model_waits_while_runs_are_in_progress(empty_registry):
    with dg.DagsterInstance.ephemeral() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS)
        instance.add_run(
            dg.DagsterRun(job_name="regina__daily_data_job", status=dg.DagsterRunStatus.STARTED)
        )
        result = first_model_tick(instance, empty_registry)
        assert isinstance(result, dg.SkipReason)
        assert "backlog" in result.skip_message


def test_no_first_model_once_a_champion_exists(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS)
        registry = RegistryWithChampion(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        result = first_model_tick(instance, registry)
        assert isinstance(result, dg.SkipReason)
        assert "regina: a champion exists (version 3)" in result.skip_message


def test_a_city_with_a_champion_does_not_stop_the_first_model_of_another(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        for city in CITIES:
            featurize(instance, FIRST_MODEL_MIN_DAYS, city)
        registry = RegistryWithChampion(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", with_champion="regina"
        )
        request = only_request(first_model_tick(instance, registry))
        assert request.tags[CITY_TAG] == "saskatoon"
        assert list(request.asset_selection) == training_keys(SASKATOON)
