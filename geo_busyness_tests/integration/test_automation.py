"""Declarative automation decides what refreshes after new raw partitions (evaluated with
``dg.evaluate_automation_conditions`` on a real instance with real materializations)."""

import datetime as dt

import dagster as dg
import pytest

from geo_busyness.assets.metadata import stage_selection
from geo_busyness.automation import after_passed_checks, on_new_data_latest_day, ready_to_deploy
from geo_busyness.core.catalog import load_catalog, load_configured_catalog
from geo_busyness.core.features import LOOKBACK_DAYS
from geo_busyness.definitions import build_definitions, defs
from geo_busyness.resources.environment import local_resources
from geo_busyness.runner import day_range
from geo_busyness.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.integration

START = dt.date(2026, 10, 1)
DAYS = day_range(START, 3)
REGINA = load_configured_catalog().get("regina")
INGESTION = stage_selection("ingestion", REGINA)


def key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["regina", name])


def keys(*names: str) -> dg.AssetSelection:
    return dg.AssetSelection.assets(*(key(name) for name in names))


def simulated(root, days=3, seed=3, city_folder=False, **settings):
    resources = local_resources(root)
    landing = resources["landing_zone"]
    simulate(
        SimulationConfig(start_date=START, days=days, pings_per_day=2000, seed=seed, **settings),
        # simulate() writes exports of every city (raw/dt=D/); or the city's own folder
        put=(
            (lambda k, content: landing.write(f"raw/city=regina/{k.removeprefix('raw/')}", content))
            if city_folder
            else landing.write
        ),
        progress=False,
    )
    return resources


@pytest.fixture
def platform(tmp_path):
    resources = simulated(tmp_path)
    test_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources
    )
    with dg.DagsterInstance.ephemeral() as instance:
        yield test_defs, instance


def materialize(platform, selection, partition=None, raise_on_error=True):
    test_defs, instance = platform
    return dg.materialize(
        [*test_defs.assets, *test_defs.asset_checks],
        selection=selection,
        partition_key=partition,
        instance=instance,
        resources=test_defs.resources,
        raise_on_error=raise_on_error,
    )


def requested(result, asset) -> set[str]:
    asset = asset if isinstance(asset, dg.AssetKey) else key(asset)
    return set(result.get_requested_partitions(asset))


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
    assert result.get_num_requested(key("restaurants")) == 1
    assert result.get_num_requested(key("restaurant_clusters")) == 1
    # features wait for the first restaurant clusters (a separate run) instead of racing them
    assert requested(result, "busyness_features") == set()
    for asset in ("training_set", "busyness_model", "champion_model"):
        assert result.get_num_requested(key(asset)) == 0, asset
    assert result.get_num_requested(dg.AssetKey("endpoint_deployment")) == 0
    # forecasts only follow the latest day, which has not landed
    assert requested(result, "busyness_forecast") == set()

    for day in DAYS:
        materialize(platform, keys("hex_hourly_busyness"), day)
    materialize(platform, keys("restaurants", "restaurant_clusters"))
    next_tick = dg.evaluate_automation_conditions(
        defs=test_defs, instance=instance, cursor=result.cursor
    )
    # each day's features and those of the LOOKBACK_DAYS days whose history it is (existing
    # partitions only)
    existing = set(
        test_defs.get_assets_def(key("busyness_features")).partitions_def.get_partition_keys()
    )
    assert (
        requested(next_tick, "busyness_features")
        == set(day_range(START, 3 + LOOKBACK_DAYS)) & existing
    )
    assert len(requested(next_tick, "busyness_features")) > 3 + 7  # beyond a week
    assert requested(next_tick, "hex_hourly_busyness") == set()


def test_a_late_file_for_an_old_day_reruns_that_day(platform):
    test_defs, instance = platform
    cursor = baseline(platform)
    for day in DAYS:
        materialize(platform, INGESTION | keys("hex_hourly_busyness"), day)
    first = dg.evaluate_automation_conditions(defs=test_defs, instance=instance, cursor=cursor)
    assert requested(first, "hex_hourly_busyness") == set()  # already up to date

    materialize(platform, INGESTION, DAYS[0])  # the day re-ingested after a late file
    again = dg.evaluate_automation_conditions(
        defs=test_defs, instance=instance, cursor=first.cursor
    )
    assert requested(again, "hex_hourly_busyness") == {DAYS[0]}


def test_a_late_day_run_with_its_own_features_refreshes_the_features_of_the_days_after(platform):
    """The run automation plans for a late day holds its busyness and its features: the days
    whose history it is must still rebuild theirs (Dagster's own ``any_deps_updated`` ignores an
    update from a run that targets the same asset in any partition)."""
    test_defs, instance = platform
    cursor = baseline(platform)
    for day in DAYS:
        materialize(platform, INGESTION, day)
    materialize(platform, keys("restaurants", "restaurant_clusters"))
    for day in DAYS[1:]:
        materialize(platform, keys("hex_hourly_busyness", "busyness_features"), day)
    settled = dg.evaluate_automation_conditions(defs=test_defs, instance=instance, cursor=cursor)

    # as automation runs it: a run whose asset selection is recorded
    late_day = [key("hex_hourly_busyness"), key("busyness_features")]
    job = dg.Definitions(
        assets=test_defs.assets,
        asset_checks=test_defs.asset_checks,
        resources=test_defs.resources,
        jobs=[dg.define_asset_job("late_day", selection=late_day)],
    ).resolve_job_def("late_day")
    run = job.execute_in_process(
        instance=instance, partition_key=DAYS[0], asset_selection=late_day
    ).dagster_run
    assert run.asset_selection == set(late_day)
    late = dg.evaluate_automation_conditions(
        defs=test_defs, instance=instance, cursor=settled.cursor
    )
    features = requested(late, "busyness_features")
    assert set(DAYS[1:]) <= features
    assert DAYS[0] not in features  # its own run built it with its busyness


def test_features_of_a_day_without_data_are_skipped_not_zeros(platform):
    _, instance = platform
    for day in DAYS:
        materialize(platform, INGESTION | keys("hex_hourly_busyness"), day)
    materialize(platform, keys("restaurants", "restaurant_clusters"))
    empty_day = day_range(START, 5)[-1]  # two days after the last landed one
    materialize(platform, keys("busyness_features"), empty_day)
    materialized = instance.get_materialized_partitions(key("busyness_features"))
    assert empty_day not in materialized
    materialize(platform, keys("busyness_features"), DAYS[-1])
    assert DAYS[-1] in instance.get_materialized_partitions(key("busyness_features"))


# --- the blocking quarantine check holds a misconfigured city's days back -------------------

WRONG_CENTRE = """\
cities:
  - id: regina
    name: Regina, SK
    center: [52.1332, -106.6700]  # Saskatoon's: 230 km off
    service_radius_km: 12
    timezone: America/Regina
    h3_resolution: 7
    restaurant_clusters: 5
"""


def test_a_mostly_quarantined_day_is_held_back_in_the_run_and_by_automation(tmp_path):
    """A wrong centre in the catalog: every row is implausible for the city. The blocking
    check fails naming the city and the catalog, and the day's hourly busyness and features are
    built neither in the same run (what the landing sensor's ingest job and the daily data job
    run) nor afterwards by automation."""
    catalog = tmp_path / "cities.yaml"
    catalog.write_text(WRONG_CENTRE)
    built = build_definitions(load_catalog(catalog))
    resources = simulated(tmp_path, days=2, city_folder=True)
    test_defs = dg.Definitions(
        assets=built.assets, asset_checks=built.asset_checks, resources=resources
    )
    with dg.DagsterInstance.ephemeral() as instance:
        platform = (test_defs, instance)
        cursor = baseline(platform)
        for day in DAYS[:2]:
            result = materialize(
                platform, INGESTION | keys("hex_hourly_busyness"), day, raise_on_error=False
            )
            assert not result.success
            [verdict] = [
                e
                for e in result.get_asset_check_evaluations()
                if e.check_name == "quarantine_share_is_low"
            ]
            assert not verdict.passed
            assert verdict.asset_key == key("clean_courier_pings")
            assert "implausible_location for regina" in verdict.description
            assert f"check the centre of regina in the catalog ({catalog})" in (verdict.description)
            assert verdict.metadata["top_reason"].value == "implausible_location"
            assert verdict.metadata["quarantined_share"].value > 0.9
            materialized = {e.asset_key for e in result.get_asset_materialization_events()}
            assert key("clean_courier_pings") in materialized
            assert key("hex_hourly_busyness") not in materialized

        after = dg.evaluate_automation_conditions(defs=test_defs, instance=instance, cursor=cursor)
        assert requested(after, "hex_hourly_busyness") == set()
        assert requested(after, "busyness_features") == set()
        # another tick, whatever else happened meanwhile: still nothing for these days
        later = dg.evaluate_automation_conditions(
            defs=test_defs, instance=instance, cursor=after.cursor
        )
        assert requested(later, "hex_hourly_busyness") == set()
        assert instance.get_materialized_partitions(key("hex_hourly_busyness")) == set()
        assert instance.get_materialized_partitions(key("busyness_features")) == set()


def test_a_day_that_passes_the_quarantine_check_flows_on(tmp_path):
    """The counterpart: the same files with the right centre are not held back."""
    resources = simulated(tmp_path, days=1, city_folder=True)
    test_defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources
    )
    with dg.DagsterInstance.ephemeral() as instance:
        platform = (test_defs, instance)
        cursor = baseline(platform)
        result = materialize(platform, INGESTION, DAYS[0])
        [verdict] = [
            e
            for e in result.get_asset_check_evaluations()
            if e.check_name == "quarantine_share_is_low"
        ]
        assert verdict.passed
        after = dg.evaluate_automation_conditions(defs=test_defs, instance=instance, cursor=cursor)
        assert requested(after, "hex_hourly_busyness") == {DAYS[0]}


# Stand-ins with the real assets' keys and dependencies: the conditions under test select
# their inputs by key.
STAND_IN_DAYS = dg.DailyPartitionsDefinition(start_date="2026-10-01", end_date="2026-10-04")


@dg.asset(key=key("champion_model"), automation_condition=after_passed_checks(REGINA))
def champion_stand_in() -> None: ...


@dg.asset(key=key("busyness_features"), partitions_def=STAND_IN_DAYS)
def features_stand_in() -> None: ...


@dg.asset(
    key=key("busyness_forecast"),
    partitions_def=STAND_IN_DAYS,
    deps=[champion_stand_in, features_stand_in],
    automation_condition=on_new_data_latest_day(REGINA),
)
def forecast_stand_in() -> None: ...


@dg.asset(
    name="endpoint_deployment",
    deps=[
        champion_stand_in,
        dg.AssetDep(forecast_stand_in, partition_mapping=dg.AllPartitionMapping()),
    ],
    automation_condition=ready_to_deploy([REGINA]),
)
def deployment_stand_in() -> None: ...


def test_a_first_champion_is_forecast_before_it_is_deployed():
    stand_ins = [champion_stand_in, features_stand_in, forecast_stand_in, deployment_stand_in]
    latest = STAND_IN_DAYS.get_last_partition_key()
    with dg.DagsterInstance.ephemeral() as instance:
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
    with dg.DagsterInstance.ephemeral() as instance:
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
