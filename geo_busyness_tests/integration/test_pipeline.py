"""The data half of the graph materialized for several days on a temporary instance."""

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from geo_busyness.checks import hourly_keys_are_unique
from geo_busyness.definitions import defs
from geo_busyness.partitions import daily_partitions
from geo_busyness.resources.environment import local_resources
from geo_busyness.runner import day_range, materialize_days
from geo_busyness.simulate import SimulationConfig, simulate

# A module fixture materializes weeks of history: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

START = dt.date(2026, 10, 1)
DAYS = 10


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    landing = local_resources(root)["landing_zone"]
    simulate(
        SimulationConfig(start_date=START, days=DAYS, pings_per_day=4000, seed=11),
        put=landing.write,
        progress=False,
    )
    test_defs = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        resources=local_resources(root),
    )
    with dg.instance_for_test() as instance:
        summary = materialize_days(day_range(START, DAYS), test_defs, instance, log=lambda _: None)
        yield root, test_defs, instance, summary


def read(root, asset, day=None):
    return pd.read_parquet(
        root / "assets" / asset / f"{day}.parquet" if day else root / "assets" / f"{asset}.parquet"
    )


def test_every_check_passed_and_rows_are_conserved(pipeline):
    root, _, instance, summary = pipeline
    assert summary.failed_checks == []
    # the simulated days are in the past, so freshness warns (without blocking anything)
    assert summary.warned_checks == ["raw_courier_pings:raw_pings_are_fresh [all]"]
    for day in day_range(START, DAYS):
        raw, clean, quarantined = (
            read(root, a, day)
            for a in ("raw_courier_pings", "clean_courier_pings", "quarantined_pings")
        )
        assert len(raw) == len(clean) + len(quarantined) > 0
        assert set(quarantined["reason"]) <= set(summary.quarantine_reasons)
    assert summary.quarantine_reasons["duplicate"] > 0
    evaluations = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("clean_courier_pings"), "rows_are_conserved")]
    )
    assert evaluations


def test_features_use_the_history_of_earlier_partitions(pipeline):
    root, *_ = pipeline
    last = read(root, "busyness_features", day_range(START, DAYS)[-1])
    first = read(root, "busyness_features", START.isoformat())
    assert len(first) == 0  # no earlier day: nothing is known yet
    assert last["orders_lag_24h"].notna().all()
    assert last["orders_lag_168h"].notna().all()
    assert last["orders"].sum() > 0
    hourly = read(root, "hex_hourly_busyness", day_range(START, DAYS)[-1])
    observed = last.merge(hourly, on=["h3_cell", "hour_start"], suffixes=("", "_hourly"))
    assert (observed["orders"] == observed["orders_hourly"]).all()


def test_rematerializing_a_day_is_idempotent_and_restaurant_ids_are_stable(pipeline):
    root, test_defs, instance, _ = pipeline
    day = day_range(START, DAYS)[3]
    before = {a: read(root, a, day) for a in ("clean_courier_pings", "hex_hourly_busyness")}
    restaurants_before = read(root, "restaurants")
    clusters_before = read(root, "restaurant_clusters")
    materialize_days([day], test_defs, instance, log=lambda _: None)
    for asset, frame in before.items():
        pd.testing.assert_frame_equal(frame, read(root, asset, day))
    pd.testing.assert_frame_equal(restaurants_before, read(root, "restaurants"))
    pd.testing.assert_frame_equal(clusters_before, read(root, "restaurant_clusters"))


def test_a_day_without_files_fails_with_a_clear_message(pipeline):
    _, test_defs, instance, _ = pipeline
    result = dg.materialize(
        [*test_defs.assets],
        selection=dg.AssetSelection.assets("raw_courier_pings"),
        partition_key="2026-09-01",
        instance=instance,
        resources=test_defs.resources,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "No landing files for 2026-09-01" in str(failure.event_specific_data.error)


def test_a_failing_blocking_check_stops_downstream_assets(pipeline):
    """Duplicated hourly keys fail `hourly_keys_are_unique`, so busyness_features is not built."""
    root, test_defs, instance, _ = pipeline
    day = day_range(START, DAYS)[-1]
    features_before = read(root, "busyness_features", day)
    hourly_before = read(root, "hex_hourly_busyness", day)

    @dg.asset(
        name="hex_hourly_busyness", partitions_def=daily_partitions, deps=["clean_courier_pings"]
    )
    def duplicated_hourly() -> pd.DataFrame:
        return pd.concat([hourly_before, hourly_before.head(3)], ignore_index=True)

    result = dg.materialize(
        [
            *(a for a in test_defs.assets if dg.AssetKey("hex_hourly_busyness") not in a.keys),
            duplicated_hourly,
            hourly_keys_are_unique,
        ],
        selection=dg.AssetSelection.assets("hex_hourly_busyness", "busyness_features"),
        partition_key=day,
        instance=instance,
        resources=test_defs.resources,
        raise_on_error=False,
    )
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert (evaluation.check_name, evaluation.passed) == ("hourly_keys_are_unique", False)
    assert evaluation.metadata["duplicated_rows"].value == 6
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == {dg.AssetKey("hex_hourly_busyness")}
    pd.testing.assert_frame_equal(features_before, read(root, "busyness_features", day))
    hourly_before.to_parquet(
        root / "assets" / "hex_hourly_busyness" / f"{day}.parquet", index=False
    )
