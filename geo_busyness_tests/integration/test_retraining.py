"""The drift sensor requests a retrain exactly when a drift report passes the thresholds."""

import dagster as dg
import pytest

from geo_busyness.resources.reports import DriftPolicy
from geo_busyness.resources.tracking import Champion, MlflowTracking
from geo_busyness.retraining import (
    FIRST_MODEL_MIN_DAYS,
    TRIGGER_TAG,
    drift_retrain_sensor,
    first_model_sensor,
    retrain_job,
    weekly_retrain,
)

pytestmark = pytest.mark.integration

DAYS = dg.StaticPartitionsDefinition(["2026-11-01", "2026-11-02"])


def report_with(drift_share: float, error_ratio: float | None = None):
    """A stand-in drift_report materialization carrying the metadata the sensor reads."""

    @dg.asset(name="drift_report", partitions_def=DAYS)
    def stand_in() -> dg.MaterializeResult:
        metadata = {"drift_share": drift_share}
        if error_ratio is not None:
            metadata["error_ratio"] = error_ratio
        return dg.MaterializeResult(metadata=metadata)

    return stand_in


def tick(instance, cursor=None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"drift_policy": DriftPolicy()}
    ) as context:
        result = drift_retrain_sensor(context)
        return result, context.cursor


def test_drift_past_the_threshold_requests_one_retrain():
    with dg.instance_for_test() as instance:
        dg.materialize([report_with(0.8)], instance=instance, partition_key="2026-11-02")
        result, cursor = tick(instance)
        assert isinstance(result, dg.RunRequest)
        assert result.tags[TRIGGER_TAG] == "drift"
        assert result.tags["geo_busyness/drift_day"] == "2026-11-02"
        again, _ = tick(instance, cursor)  # the same report is not acted on twice
        assert isinstance(again, dg.SkipReason)


def test_error_growth_alone_requests_a_retrain():
    with dg.instance_for_test() as instance:
        dg.materialize(
            [report_with(0.1, error_ratio=2.0)], instance=instance, partition_key="2026-11-01"
        )
        result, _ = tick(instance)
        assert isinstance(result, dg.RunRequest)


def test_small_drift_is_skipped_with_the_reason():
    with dg.instance_for_test() as instance:
        dg.materialize(
            [report_with(0.15, error_ratio=1.1)], instance=instance, partition_key="2026-11-01"
        )
        result, _ = tick(instance)
        assert isinstance(result, dg.SkipReason)
        assert "15% of the features drifted (limit 20%)" in result.skip_message


def test_only_the_newest_report_counts_on_the_first_tick():
    with dg.instance_for_test() as instance:
        dg.materialize([report_with(0.9)], instance=instance, partition_key="2026-11-01")
        dg.materialize([report_with(0.1)], instance=instance, partition_key="2026-11-02")
        result, _ = tick(instance)
        assert isinstance(result, dg.SkipReason)  # the old drifted report is history


def test_retraining_is_also_weekly():
    assert weekly_retrain.job_name == retrain_job.name
    assert weekly_retrain.cron_schedule == "0 3 * * 1"


FEATURE_DAYS = dg.DailyPartitionsDefinition(start_date="2026-10-01", end_date="2026-11-15")


def featurize(instance, days: int) -> None:
    """Record busyness_features materializations of the first ``days`` days (the sensor only
    counts materialized days and looks at the newest one)."""
    for key in FEATURE_DAYS.get_partition_keys()[:days]:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="busyness_features", partition=key)
        )


class RegistryWithChampion(MlflowTracking):
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
    with dg.instance_for_test() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS - 1)
        result = first_model_tick(instance, empty_registry)
        assert isinstance(result, dg.SkipReason)
        assert f"{FIRST_MODEL_MIN_DAYS - 1} of {FIRST_MODEL_MIN_DAYS} days" in result.skip_message


def test_first_model_is_requested_once_the_backlog_is_featurized(empty_registry):
    with dg.instance_for_test() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS)
        result = first_model_tick(instance, empty_registry)
        assert isinstance(result, dg.RunRequest)
        assert result.tags[TRIGGER_TAG] == "first_model"
        again = first_model_tick(instance, empty_registry)
        assert again.run_key == result.run_key  # same features: deduplicated by the run key
        featurize(instance, 1)  # a day re-featurized: a refused first model may be retried
        assert first_model_tick(instance, empty_registry).run_key != result.run_key


def test_first_model_waits_while_runs_are_in_progress(empty_registry):
    with dg.instance_for_test() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS)
        instance.add_run(
            dg.DagsterRun(job_name="daily_data_job", status=dg.DagsterRunStatus.STARTED)
        )
        result = first_model_tick(instance, empty_registry)
        assert isinstance(result, dg.SkipReason)
        assert "backlog" in result.skip_message


def test_no_first_model_once_a_champion_exists(tmp_path):
    with dg.instance_for_test() as instance:
        featurize(instance, FIRST_MODEL_MIN_DAYS)
        registry = RegistryWithChampion(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        result = first_model_tick(instance, registry)
        assert isinstance(result, dg.SkipReason)
        assert "version 3" in result.skip_message
