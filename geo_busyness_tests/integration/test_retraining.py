"""The drift sensor requests a retrain exactly when a drift report passes the thresholds."""

import dagster as dg
import pytest

from geo_busyness.resources.reports import DriftPolicy
from geo_busyness.retraining import TRIGGER_TAG, drift_retrain_sensor, retrain_job, weekly_retrain

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
