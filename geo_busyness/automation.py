"""Declarative automation: when each asset refreshes by itself.

``AutomationCondition.eager()`` does not fit daily partitions with history windows: it only
looks at the latest time window (a late file for an old day would never flow through) and it
waits while any dependency is missing (the 8-day windows reach before the first landed day, so
the first week would never run). These conditions keep eager's "a dependency updated, nothing
upstream still running" core and choose the window per asset.
"""

from collections.abc import Sequence

import dagster as dg

from geo_busyness.core.city import City
from geo_busyness.resources.settings import sensor_interval_seconds


def _slowly_changing(city: City) -> dg.AssetSelection:
    """Unpartitioned inputs that change with every new day but only matter to new partitions:
    reacting to them would recompute every historical partition each day."""
    return dg.AssetSelection.assets(dg.AssetKey([city.key, "restaurant_clusters"]))


def _required_singletons(city: City) -> dg.AssetSelection:
    """Unpartitioned inputs a daily partition cannot do without. Missing history days are fine
    (the features treat them as unknown); a missing one of these is waited for, not failed on."""
    return _slowly_changing(city) | dg.AssetSelection.assets(
        dg.AssetKey([city.key, "champion_model"]), dg.AssetKey([city.key, "training_set"])
    )


def _deps_updated() -> dg.AutomationCondition:
    """A dependency partition updated since the previous tick or will be requested on this one.

    Dagster's ``any_deps_updated`` ignores an update made by a run that also targets this asset,
    in any partition: a run of day D's busyness and features then hides D's new busyness from the
    features of the days after D, which stay built without it for good (seen in the loop e2e: a
    day landing beside the next one). An update in the same run as the target's own partition
    needs no exclusion here: ``since_last_handled`` resets on that materialization, and the reset
    wins over a trigger of the same tick.
    """
    return dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.newly_updated() | dg.AutomationCondition.will_be_requested()
    ).with_label("any_deps_updated")


def _updated_and_settled(
    updates: dg.AutomationCondition, city: City | None
) -> dg.AutomationCondition:
    """``updates`` happened since the last request, nothing upstream runs, and the required
    unpartitioned inputs exist (on a fresh deployment days land before the first restaurant
    clusters or the first champion: their features and forecasts wait instead of failing)."""
    settled = (
        updates.since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    )
    if city is None:
        return settled
    required_input_missing = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.missing()
    ).allow(_required_singletons(city))
    return settled & ~required_input_missing


def on_new_data(city: City) -> dg.AutomationCondition:
    """Any partition whose dependencies updated, in any time window (late files re-run their
    day and the days whose history they are)."""
    updates = _deps_updated().ignore(_slowly_changing(city))
    return _updated_and_settled(updates, city).with_label("on_new_data")


def on_new_checked_data(city: City) -> dg.AutomationCondition:
    """:func:`on_new_data`, once the blocking checks of the dependencies' partitions passed: a
    day refused by a blocking check (``quarantine_share_is_low``: mostly quarantined) waits for
    a fix instead of flowing on in a run of its own."""
    return (
        on_new_data(city) & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("on_new_checked_data")


def on_new_data_latest_day(city: City) -> dg.AutomationCondition:
    """Only the latest day: forecasts and drift reports matter for the newest data; their
    unpartitioned inputs (the champion, the training set) would otherwise re-run every day."""
    updates = _deps_updated().ignore(_slowly_changing(city))
    return (
        dg.AutomationCondition.in_latest_time_window() & _updated_and_settled(updates, city)
    ).with_label("on_new_data_latest_day")


def on_new_day_of_monitoring(city: City) -> dg.AutomationCondition:
    """Drift reports: the latest day, when its features or actuals land. Not when the training
    set or champion changes: a retrain would otherwise re-report the same day, and a report
    that still shows drift would request the next retrain, forever."""
    updates = _deps_updated().ignore(
        _slowly_changing(city) | dg.AssetSelection.assets(dg.AssetKey([city.key, "training_set"]))
    )
    return (
        dg.AutomationCondition.in_latest_time_window() & _updated_and_settled(updates, city)
    ).with_label("on_new_day_of_monitoring")


def after_passed_checks(city: City) -> dg.AutomationCondition:
    """Promotion: a dependency updated and every blocking check upstream passed."""
    return (
        _updated_and_settled(_deps_updated(), city)
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("after_passed_checks")


def ready_to_deploy(cities: Sequence[City]) -> dg.AutomationCondition:
    """Deployment: when a forecast lands and every blocking check upstream passed. Not on a
    promotion itself: the promotion re-forecasts the latest day, and deploying beside that
    rewrite would ship the old model's forecast (measured on the stack: the deployment read a
    half-replaced Parquet object on S3 and failed). The new forecast then triggers the deploy."""
    updates = _deps_updated().ignore(
        dg.AssetSelection.assets(*(dg.AssetKey([city.key, "champion_model"]) for city in cities))
    )
    return (
        _updated_and_settled(updates, None)
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("ready_to_deploy")


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(),
    description="Evaluates every asset's automation condition (on by default, unlike Dagster's).",
)
