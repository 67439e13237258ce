"""The data half of the graph materialized for several days on a temporary instance."""

import datetime as dt
import os
import textwrap

import dagster as dg
import pandas as pd
import pytest

from geo_busyness.core.catalog import load_catalog, load_configured_catalog
from geo_busyness.core.city import City
from geo_busyness.definitions import build_definitions, defs
from geo_busyness.partitions import city_partitions, day_range_problem
from geo_busyness.resources.environment import local_resources
from geo_busyness.resources.io_manager import committed_path
from geo_busyness.runner import day_range, materialize_days, run_landing
from geo_busyness.simulate import SimulationConfig, simulate

# A module fixture materializes weeks of history: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

START = dt.date(2026, 10, 1)
DAYS = 10
CITY = "regina"
REGINA = load_configured_catalog().get(CITY)


def key(name: str) -> dg.AssetKey:
    return dg.AssetKey([CITY, name])


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
        jobs=defs.jobs,
        resources=local_resources(root),
    )
    with dg.DagsterInstance.ephemeral() as instance:
        summary = materialize_days(day_range(START, DAYS), test_defs, instance, log=lambda _: None)
        yield root, test_defs, instance, summary


def read(root, asset, day=None):
    return pd.read_parquet(committed_path(root / "assets", [CITY, asset], day).path)


def test_every_check_passed_and_rows_are_conserved(pipeline):
    root, _, instance, summary = pipeline
    assert summary.city == CITY
    assert summary.failed_checks == []
    # the simulated days are in the past, so freshness warns (once: its verdict after the load)
    [warning] = summary.warned_checks
    assert warning.startswith("regina/raw_courier_pings:raw_pings_are_fresh [all]: ")
    for day in day_range(START, DAYS):
        raw, clean, quarantined = (
            read(root, a, day)
            for a in ("raw_courier_pings", "clean_courier_pings", "quarantined_pings")
        )
        assert len(raw) == len(clean) + len(quarantined) > 0
        assert set(quarantined["reason"]) <= set(summary.quarantine_reasons)
    assert summary.quarantine_reasons["duplicate"] > 0
    evaluations = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [
            dg.AssetCheckKey(key("clean_courier_pings"), "rows_are_conserved"),
            dg.AssetCheckKey(key("clean_courier_pings"), "quarantine_share_is_low"),
        ]
    )
    assert len(evaluations) == 2


def test_the_load_runs_named_jobs_newest_day_first(pipeline):
    """Each day ingested by the city's daily data job, newest first, then restaurants, then
    each day's features: under Jobs, not as ad hoc runs."""
    *_, instance, _ = pipeline
    days = day_range(START, DAYS)
    oldest_first = list(reversed(instance.get_runs()))[: 2 * DAYS + 1]
    assert [(run.job_name, run.tags.get("dagster/partition")) for run in oldest_first] == [
        *((f"{CITY}__daily_data_job", day) for day in reversed(days)),
        (f"{CITY}__restaurants_job", None),
        *((f"{CITY}__daily_data_job", day) for day in days),
    ]


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
        selection=dg.AssetSelection.assets(key("raw_courier_pings")),
        partition_key="2026-09-01",
        instance=instance,
        resources=test_defs.resources,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "No landing files for 2026-09-01" in message
    # both places a day of the city can land are named
    assert "raw/city=regina/dt=2026-09-01/" in message and "raw/dt=2026-09-01/" in message


def test_without_a_champion_forecast_and_deployment_skip_and_say_why(pipeline):
    """No candidate was ever trained here: both skip (no output, no failure) with the reason
    on the asset's events instead of a load error of champion_model.pickle."""
    _, test_defs, instance, _ = pipeline
    day = (START + dt.timedelta(days=DAYS - 1)).isoformat()
    forecast = dg.materialize(
        [*test_defs.assets],
        selection=dg.AssetSelection.assets(key("busyness_forecast")),
        partition_key=day,
        instance=instance,
        resources=test_defs.resources,
    )
    assert forecast.success
    assert forecast.asset_materializations_for_node(f"{CITY}__busyness_forecast") == []
    (observation,) = observations(forecast)
    assert "regina has no champion model yet" in observation.description
    assert observation.partition == day

    deployment = dg.materialize(
        [*test_defs.assets],
        selection=dg.AssetSelection.assets("endpoint_deployment"),
        instance=instance,
        resources=test_defs.resources,
    )
    assert deployment.success
    assert deployment.asset_materializations_for_node("endpoint_deployment") == []
    (observation,) = observations(deployment)
    assert observation.description.startswith("nothing deployed: no city has both a champion")


def observations(result) -> list[dg.AssetObservation]:
    return [
        event.asset_observation_data.asset_observation
        for event in result.all_events
        if event.event_type_value == "ASSET_OBSERVATION"
    ]


def test_a_failing_blocking_check_stops_downstream_assets(pipeline):
    """Duplicated hourly keys fail `hourly_keys_are_unique`, so busyness_features is not built."""
    root, test_defs, instance, _ = pipeline
    day = day_range(START, DAYS)[-1]
    features_before = read(root, "busyness_features", day)
    hourly_before = read(root, "hex_hourly_busyness", day)
    hourly_check = next(
        check
        for check in test_defs.asset_checks
        if dg.AssetCheckKey(key("hex_hourly_busyness"), "hourly_keys_are_unique")
        in check.check_keys
    )

    @dg.asset(
        key=key("hex_hourly_busyness"),
        partitions_def=city_partitions(REGINA),
        deps=[key("clean_courier_pings")],
    )
    def duplicated_hourly() -> pd.DataFrame:
        return pd.concat([hourly_before, hourly_before.head(3)], ignore_index=True)

    result = dg.materialize(
        [
            *(a for a in test_defs.assets if key("hex_hourly_busyness") not in a.keys),
            duplicated_hourly,
            hourly_check,
        ],
        selection=dg.AssetSelection.assets(key("hex_hourly_busyness"), key("busyness_features")),
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
    assert materialized == {key("hex_hourly_busyness")}
    pd.testing.assert_frame_equal(features_before, read(root, "busyness_features", day))
    hourly_before.to_parquet(
        root / "assets" / CITY / "hex_hourly_busyness" / f"{day}.parquet", index=False
    )


# --- a city whose catalog entry is wrong, whose files are not its own, or starts later ------

REGINA_ENTRY = """\
  - id: regina
    name: Regina, SK
    center: {center}
    service_radius_km: 12
    timezone: America/Regina
    h3_resolution: {resolution}
    restaurant_clusters: 5
"""
SASKATOON = City(name="Saskatoon, SK", id="saskatoon", center_lat=52.1332, center_lon=-106.67)


def write_catalog(path, center="[50.4452, -104.6189]", resolution=7, extra=""):
    entry = REGINA_ENTRY.format(center=center, resolution=resolution)
    path.write_text("cities:\n" + entry + textwrap.indent(extra, "    "))
    return path


def land_in_city_folder(root, days, start=START, city=REGINA, seed=5, **config):
    """Simulated days of ``city`` in Regina's own folder ``raw/city=regina/`` (every row is
    Regina's, wherever it is); ``config``: more SimulationConfig fields."""
    landing = local_resources(root)["landing_zone"]
    simulate(
        SimulationConfig(
            city=city, start_date=start, days=days, pings_per_day=1500, seed=seed, **config
        ),
        # simulate() writes raw/dt=D/<file>; the same file in the city's own folder
        put=lambda k, content: landing.write(f"raw/city={CITY}/{k.removeprefix('raw/')}", content),
        progress=False,
    )


def city_defs(catalog_path, root):
    catalog = load_catalog(catalog_path)
    built = build_definitions(catalog)
    return dg.Definitions(
        assets=built.assets,
        asset_checks=built.asset_checks,
        jobs=built.jobs,
        resources=local_resources(root),
    ), catalog.get(CITY)


def test_a_mostly_quarantined_day_fails_its_check_naming_the_city_and_the_catalog(tmp_path):
    """The second day's files in Regina's folder are Saskatoon's (230 km away): every row is
    implausible for Regina. The blocking check refuses that day and names the cause; its
    busyness and features wait, the good day goes through."""
    catalog = write_catalog(tmp_path / "cities.yaml")
    good, bad = day_range(START, 2)
    land_in_city_folder(tmp_path, 1)
    land_in_city_folder(tmp_path, 1, start=START + dt.timedelta(days=1), city=SASKATOON)
    test_defs, _ = city_defs(catalog, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        summary = materialize_days([good, bad], test_defs, instance, log=lambda _: None)
        assert summary.quarantine_reasons["implausible_location"] > 1000
        [failed] = summary.failed_checks
        assert failed.startswith(f"regina/clean_courier_pings:quarantine_share_is_low [{bad}]: ")
        assert "100.0% of" in failed
        assert "implausible_location for regina" in failed
        assert f"check the centre of regina in the catalog ({catalog})" in failed
        assert "or whether these files belong to another city" in failed
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key("clean_courier_pings"), "quarantine_share_is_low"), limit=10
        )
        assert {(r.partition, r.status.value) for r in history} == {
            (good, "SUCCEEDED"),
            (bad, "FAILED"),
        }
        # the day's clean pings exist (they are what the check judges), nothing after them
        assert {good, bad} <= instance.get_materialized_partitions(key("clean_courier_pings"))
        assert instance.get_materialized_partitions(key("hex_hourly_busyness")) == {good}
        assert instance.get_materialized_partitions(key("busyness_features")) == {good}
        assert [(d.day, d.clean_rows > 0, d.feature_rows > 0) for d in summary.days] == [
            (good, True, False),  # the first day has no history: no feature rows yet
            (bad, False, False),
        ]


def test_a_wrong_centre_reports_the_failed_checks_instead_of_an_error(tmp_path):
    catalog = write_catalog(tmp_path / "cities.yaml", center="[52.1332, -106.6700]")
    land_in_city_folder(tmp_path, 1)
    test_defs, regina = city_defs(catalog, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        summary = materialize_days(
            [START.isoformat()], test_defs, instance, log=lambda _: None, city=regina
        )
        [failed] = summary.failed_checks
        assert f"check the centre of regina in the catalog ({catalog})" in failed
        # restaurant_clusters had no restaurant left: said beside the check, not raised
        assert any("restaurants" in error for error in summary.errors), summary.errors


def test_the_same_days_pass_with_the_right_centre(tmp_path):
    """The counterpart: Regina's own files with the catalog's real centre pass the check,
    though a re-delivered file makes a quarter of the day duplicates (nothing is lost)."""
    catalog = write_catalog(tmp_path / "cities.yaml")
    land_in_city_folder(tmp_path, 1)
    test_defs, regina = city_defs(catalog, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        summary = materialize_days(
            [START.isoformat()], test_defs, instance, log=lambda _: None, city=regina
        )
        assert summary.failed_checks == []
        [day] = summary.days
        assert summary.quarantine_reasons["duplicate"] > 0.2 * day.raw_rows
        assert START.isoformat() in instance.get_materialized_partitions(key("hex_hourly_busyness"))


def test_changing_the_catalog_entry_marks_what_was_built_with_the_old_one_stale(tmp_path):
    before = write_catalog(tmp_path / "before.yaml")
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(before.read_text().replace("Regina, SK", "Regina"))
    moved = write_catalog(tmp_path / "moved.yaml", center="[50.4500, -104.6100]")
    finer = write_catalog(tmp_path / "finer.yaml", resolution=8)
    land_in_city_folder(tmp_path, 1)
    test_defs, _ = city_defs(before, tmp_path)
    day = START.isoformat()
    names = ("raw_courier_pings", "clean_courier_pings", "quarantined_pings", "hex_hourly_busyness")
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize(
            [*test_defs.assets, *test_defs.asset_checks],
            selection=dg.AssetSelection.assets(*(key(name) for name in names)),
            partition_key=day,
            instance=instance,
            resources=test_defs.resources,
        )

        def built_with(name):
            event = instance.get_latest_materialization_event(key(name))
            return event.asset_materialization.tags["dagster/code_version"]

        def current(catalog, name):
            assets_def = build_definitions(load_catalog(catalog)).get_assets_def(key(name))
            return assets_def.code_versions_by_key[key(name)]

        for name in names:
            assert built_with(name) == current(before, name), name
            assert built_with(name) == current(renamed, name), name  # a new name is not a change
            assert built_with(name) != current(moved, name), name
            assert built_with(name) != current(finer, name), name


def test_a_day_before_the_first_day_of_a_city_names_the_setting(tmp_path):
    catalog = write_catalog(tmp_path / "cities.yaml", extra="first_day: 2026-10-02\n")
    land_in_city_folder(tmp_path, 2)
    test_defs, regina = city_defs(catalog, tmp_path)
    problem = day_range_problem(regina, "2026-10-01")
    assert problem is not None
    assert "2026-10-01 is before 2026-10-02" in problem
    assert "first_day" in problem and "regina" in problem
    assert day_range_problem(regina, "2026-10-02") is None
    with dg.DagsterInstance.ephemeral() as instance:
        run = run_landing(test_defs, instance, [regina], train=False, log=lambda _: None)
        assert [[d.day for d in c.data.days] for c in run.cities] == [["2026-10-02"]]
        assert any(problem in note for note in run.left_out), run.left_out


def test_materialize_days_names_the_setting_of_a_day_out_of_range(tmp_path):
    catalog = write_catalog(tmp_path / "cities.yaml", extra="first_day: 2026-10-02\n")
    land_in_city_folder(tmp_path, 2)
    test_defs, regina = city_defs(catalog, tmp_path)
    with (
        dg.DagsterInstance.ephemeral() as instance,
        pytest.raises(Exception, match="first_day of regina"),
    ):
        materialize_days(["2026-10-01"], test_defs, instance, log=lambda _: None, city=regina)


def latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetKey, day: str) -> dict:
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[day]), limit=1
    ).records
    return {name: value.value for name, value in record.asset_materialization.metadata.items()}


def test_a_day_whose_files_landed_before_it_ended_has_no_targets_after_they_landed(tmp_path):
    """The last day's export was taken at 23:10 (its orders stop at 23:00): by its tail alone
    it looks whole (Regina is busy at midnight UTC, so the usual tail is short); when its files
    landed (their mtime here, LastModified on S3) says the rest of the day is unknown."""
    catalog = write_catalog(tmp_path / "cities.yaml")
    days = day_range(START, 3)
    land_in_city_folder(tmp_path, 3, last_day_ends_at_hour=23)
    taken = pd.Timestamp(f"{days[-1]}T23:10:00Z").timestamp()
    files = list((tmp_path / "landing").glob(f"raw/city={CITY}/dt={days[-1]}/*"))
    assert files
    for path in files:
        os.utime(path, (taken, taken))
    test_defs, _ = city_defs(catalog, tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        materialize_days(days, test_defs, instance, log=lambda _: None)
        raw = {day: latest_metadata(instance, key("raw_courier_pings"), day) for day in days}
        features = {day: latest_metadata(instance, key("busyness_features"), day) for day in days}
    assert [raw[day]["landed_after_day_end"] for day in days] == [True, True, False]
    assert raw[days[-1]]["landed_until"] == f"{days[-1]}T23:10:00+00:00"
    assert [features[day]["day_complete"] for day in days[1:]] == [True, False]
    assert features[days[-1]]["observed_until"] == f"{days[-1]}T23:00:00+00:00"
    targets = read(tmp_path, "busyness_features", days[-1])
    assert targets["hour_start"].max() == pd.Timestamp(f"{days[-1]}T22:00:00Z")
