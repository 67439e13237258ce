"""Declarative automation decides what refreshes after new raw partitions (evaluated with
``dg.evaluate_automation_conditions`` on a real instance with real materializations)."""

import datetime as dt

import dagster as dg
import pytest

from geo_busyness.automation import after_passed_checks, on_new_data_latest_day, ready_to_deploy
from geo_busyness.definitions import defs
from geo_busyness.resources.environment import local_resources
from geo_busyness.runner import day_range
from geo_busyness.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.integration

START = dt.date(2026, 10, 1)
DAYS = day_range(START, 3)
INGESTION = dg.AssetSelection.groups("ingestion")


@pytest.fixture
def platform(tmp_path):
    resources = local_resources(tmp_path)
    simulate(
        SimulationConfig(start_date=START, days=3, pings_per_day=2000, seed=3),
        put=resources["landing_zone"].write,
        progress=False,
    )
    test_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources
    )
    with dg.instance_for_test() as instance:
        yield test_defs, instance


def materialize(platform, selection, partition=None):
    test_defs, instance = platform
    dg.materialize(
        [*test_defs.assets, *test_defs.asset_checks],
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=test_defs.resources,
    )


def requested(result, asset: str) -> set[str]:
    return set(result.get_requested_partitions(dg.AssetKey(asset)))


def baseline(platform):
    """The automation sensor's first tick: it sees updates only from then on."""
    test_defs, instance = platform
    return dg.evaluate_automation_conditions(defs=test_defs, instance=instance).cursor


def test_new_days_flow_to_features_but_not_to_training(platform):
    test_defs, instance = platform
    cursor = baseline(platform)
    for day in DAYS:
        materialize(platform, INGESTION, day)
    result = dg.evaluate_automation_conditions(defs=test_defs, instance=instance, cursor=cursor)

    assert requested(result, "hex_hourly_busyness") == set(DAYS)
    assert result.get_num_requested(dg.AssetKey("restaurants")) == 1
    assert result.get_num_requested(dg.AssetKey("restaurant_clusters")) == 1
    # features wait for the first restaurant clusters (a separate run) instead of racing them
    assert requested(result, "busyness_features") == set()
    for asset in ("training_set", "busyness_model", "champion_model", "endpoint_deployment"):
        assert result.get_num_requested(dg.AssetKey(asset)) == 0, asset
    # forecasts only follow the latest day, which has not landed
    assert requested(result, "busyness_forecast") == set()

    for day in DAYS:
        materialize(platform, dg.AssetSelection.assets("hex_hourly_busyness"), day)
    materialize(platform, dg.AssetSelection.assets("restaurants", "restaurant_clusters"))
    next_tick = dg.evaluate_automation_conditions(
        defs=test_defs, instance=instance, cursor=result.cursor
    )
    # each day's features and those of the 8 days whose history it is (existing partitions)
    assert requested(next_tick, "busyness_features") == set(day_range(START, 3 + 8))
    assert requested(next_tick, "hex_hourly_busyness") == set()


def test_a_late_file_for_an_old_day_reruns_that_day(platform):
    test_defs, instance = platform
    cursor = baseline(platform)
    for day in DAYS:
        materialize(platform, INGESTION | dg.AssetSelection.assets("hex_hourly_busyness"), day)
    first = dg.evaluate_automation_conditions(defs=test_defs, instance=instance, cursor=cursor)
    assert requested(first, "hex_hourly_busyness") == set()  # already up to date

    materialize(platform, INGESTION, DAYS[0])  # the day re-ingested after a late file
    again = dg.evaluate_automation_conditions(
        defs=test_defs, instance=instance, cursor=first.cursor
    )
    assert requested(again, "hex_hourly_busyness") == {DAYS[0]}


def test_features_of_a_day_without_data_are_skipped_not_zeros(platform):
    _, instance = platform
    for day in DAYS:
        materialize(platform, INGESTION | dg.AssetSelection.assets("hex_hourly_busyness"), day)
    materialize(platform, dg.AssetSelection.assets("restaurants", "restaurant_clusters"))
    empty_day = day_range(START, 5)[-1]  # two days after the last landed one
    materialize(platform, dg.AssetSelection.assets("busyness_features"), empty_day)
    materialized = instance.get_materialized_partitions(dg.AssetKey("busyness_features"))
    assert empty_day not in materialized
    materialize(platform, dg.AssetSelection.assets("busyness_features"), DAYS[-1])
    assert DAYS[-1] in instance.get_materialized_partitions(dg.AssetKey("busyness_features"))


# Stand-ins with the real assets' names and dependencies: the conditions under test select
# their inputs by name.
STAND_IN_DAYS = dg.DailyPartitionsDefinition(start_date="2026-10-01", end_date="2026-10-04")


@dg.asset(name="champion_model", automation_condition=after_passed_checks())
def champion_stand_in() -> None: ...


@dg.asset(name="busyness_features", partitions_def=STAND_IN_DAYS)
def features_stand_in() -> None: ...


@dg.asset(
    name="busyness_forecast",
    partitions_def=STAND_IN_DAYS,
    deps=[champion_stand_in, features_stand_in],
    automation_condition=on_new_data_latest_day(),
)
def forecast_stand_in() -> None: ...


@dg.asset(
    name="endpoint_deployment",
    deps=[
        champion_stand_in,
        dg.AssetDep(forecast_stand_in, partition_mapping=dg.AllPartitionMapping()),
    ],
    automation_condition=ready_to_deploy(),
)
def deployment_stand_in() -> None: ...


def test_a_first_champion_is_forecast_before_it_is_deployed():
    stand_ins = [champion_stand_in, features_stand_in, forecast_stand_in, deployment_stand_in]
    latest = STAND_IN_DAYS.get_last_partition_key()
    with dg.instance_for_test() as instance:
        cursor = dg.evaluate_automation_conditions(defs=stand_ins, instance=instance).cursor
        dg.materialize([champion_stand_in], instance=instance)  # the first promotion
        promoted = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=cursor
        )
        assert requested(promoted, "busyness_forecast") == {latest}
        assert promoted.get_num_requested(dg.AssetKey("endpoint_deployment")) == 0

        dg.materialize(
            stand_ins, selection=[forecast_stand_in.key], instance=instance, partition_key=latest
        )
        forecast = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=promoted.cursor
        )
        assert forecast.get_num_requested(dg.AssetKey("endpoint_deployment")) == 1
        dg.materialize(stand_ins, selection=[deployment_stand_in.key], instance=instance)
        deployed = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=forecast.cursor
        )

        # A retrain promotes a second champion: re-forecast first, deploy after.
        dg.materialize([champion_stand_in], instance=instance)
        promoted_again = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=deployed.cursor
        )
        assert requested(promoted_again, "busyness_forecast") == {latest}
        assert promoted_again.get_num_requested(dg.AssetKey("endpoint_deployment")) == 0
        dg.materialize(
            stand_ins, selection=[forecast_stand_in.key], instance=instance, partition_key=latest
        )
        reforecast = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=promoted_again.cursor
        )
        assert reforecast.get_num_requested(dg.AssetKey("endpoint_deployment")) == 1


def test_new_features_wait_for_the_first_champion_before_a_forecast():
    stand_ins = [champion_stand_in, features_stand_in, forecast_stand_in, deployment_stand_in]
    latest = STAND_IN_DAYS.get_last_partition_key()
    with dg.instance_for_test() as instance:
        cursor = dg.evaluate_automation_conditions(defs=stand_ins, instance=instance).cursor
        dg.materialize(
            stand_ins, selection=[features_stand_in.key], instance=instance, partition_key=latest
        )
        waiting = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=cursor
        )
        assert requested(waiting, "busyness_forecast") == set()  # no champion yet
        dg.materialize([champion_stand_in], instance=instance)
        ready = dg.evaluate_automation_conditions(
            defs=stand_ins, instance=instance, cursor=waiting.cursor
        )
        assert requested(ready, "busyness_forecast") == {latest}
