"""The self-retraining loop: drift (or the weekly schedule) requests a retrain; the result
reaches the endpoint only through the blocking promotion checks. Before any model exists,
``first_model_sensor`` trains the first one once enough days are featurized.

``retrain_job`` materializes the training group. A candidate that passes the gates becomes the
champion, and automation then refreshes the latest forecast and redeploys
(``busyness_forecast`` and ``endpoint_deployment`` depend on ``champion_model``). A candidate
that fails them fails its blocking check: the run fails with the check's verdict and the
current champion keeps serving.
"""

from collections.abc import Sequence

import dagster as dg

from geo_busyness.assets.metadata import city_key, stage_selection
from geo_busyness.assets.training import TrainingSetConfig
from geo_busyness.core.city import City
from geo_busyness.core.drift import needs_retraining
from geo_busyness.resources.reports import DriftPolicy
from geo_busyness.resources.settings import sensor_interval_seconds
from geo_busyness.resources.tracking import MlflowTracking

TRIGGER_TAG = "geo_busyness/trigger"
CITY_TAG = "geo_busyness/city"
# Training runs get a bigger task under the ECS run launcher (ignored elsewhere): 4 vCPU for the
# search, 16 GB for ~1M feature rows with headroom (BENCHMARKS.md "Model": 3.2 GB peak).
TRAINING_RUN_TAGS = {"ecs/cpu": "4096", "ecs/memory": "16384"}

TRAINING = "training"

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=stage_selection(TRAINING),
    tags=TRAINING_RUN_TAGS,
    description=(
        "Retrain: training set → candidate → evaluation → blocking checks → champion, for "
        "every city (or the cities a request selects). Requested by drift_retrain_sensor, "
        "first_model_sensor and weekly_retrain."
    ),
)

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    tags={TRIGGER_TAG: "schedule"},
    description="Regular retrain of every city, Mondays 03:00 UTC, whatever the drift.",
)


def training_keys(city: City) -> list[dg.AssetKey]:
    """What a retrain of ``city`` materializes (its checks come with them)."""
    return [
        city_key(city, name)
        for name in ("training_set", "busyness_model", "model_evaluation", "champion_model")
    ]


def _newest_reports(instance: dg.DagsterInstance, city: City, after: int | None) -> list:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=city_key(city, "drift_report"), after_storage_id=after),
        limit=1 if after is None else 1000,
        ascending=after is not None,
    ).records


def build_drift_retrain_sensor(cities: Sequence[City]) -> dg.SensorDefinition:
    @dg.sensor(
        name="drift_retrain_sensor",
        job=retrain_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval_seconds(),
        description=(
            "Requests a retrain of a city when a new drift report of it passes the drift_policy "
            "thresholds (drift share or forecast error growth; one retrain per city for however "
            "many reports a tick sees)."
        ),
    )
    def drift_retrain_sensor(context: dg.SensorEvaluationContext, drift_policy: DriftPolicy):
        # Cursor: storage id of the last report looked at. Without one (first tick), only the
        # newest report of each city counts: old reports must not retrain a newer model.
        after = int(context.cursor) if context.cursor else None
        requests, skipped, newest = [], [], after or 0
        for city in cities:
            records = _newest_reports(context.instance, city, after)
            if not records:
                continue
            newest = max(newest, *(record.storage_id for record in records))
            request, note = _drift_request(city, records, drift_policy)
            if request is not None:
                context.log.info(note)
                requests.append(request)
            else:
                skipped.append(note)
        if newest != (after or 0):
            context.update_cursor(str(newest))
        if not requests:
            return dg.SkipReason("; ".join(skipped) or "no new drift report")
        return requests

    return drift_retrain_sensor


def _drift_request(city: City, records: list, drift_policy: DriftPolicy):
    """(a retrain request for ``city`` or None, what the reports said)."""
    verdicts = []
    for record in records:
        materialization = record.asset_materialization
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        if "drift_share" not in metadata:
            continue
        retrain, reason = needs_retraining(
            metadata["drift_share"], metadata.get("error_ratio"), drift_policy.to_thresholds()
        )
        verdicts.append((retrain, materialization.partition, reason, record.storage_id))
    due = [verdict for verdict in verdicts if verdict[0]]
    if not due:
        return None, (
            "; ".join(f"{city.id} drift_report[{day}]: {reason}" for _, day, reason, _ in verdicts)
            or f"new drift reports of {city.id} carry no drift_share"
        )
    _, day, reason, storage_id = due[-1]
    return dg.RunRequest(
        run_key=f"drift:{storage_id}",
        asset_selection=training_keys(city),
        tags={
            TRIGGER_TAG: "drift",
            "geo_busyness/drift_day": str(day),
            CITY_TAG: city.id,
        },
    ), f"{city.id} drift_report[{day}]: {reason}; requesting a retrain of {city.id}"


# A first model is trained on a full default training window, never on a few days of backlog.
FIRST_MODEL_MIN_DAYS = TrainingSetConfig().window_days
_ACTIVE_RUNS = dg.RunsFilter(
    statuses=[
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
)


def build_first_model_sensor(cities: Sequence[City]) -> dg.SensorDefinition:
    @dg.sensor(
        name="first_model_sensor",
        job=retrain_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=sensor_interval_seconds(),
        description=(
            "Cold start, per city: while a city's registry has no champion, trains its first "
            f"model once {FIRST_MODEL_MIN_DAYS} days are featurized and no run is queued or "
            "running (the landing backlog is done). A refused first candidate is retried when "
            "its features change."
        ),
    )
    def first_model_sensor(context: dg.SensorEvaluationContext, mlflow_tracking: MlflowTracking):
        waiting, requests = [], []
        for city in cities:
            features = city_key(city, "busyness_features")
            days = context.instance.get_materialized_partitions(features)
            if len(days) < FIRST_MODEL_MIN_DAYS:
                waiting.append(
                    f"{city.id}: {len(days)} of {FIRST_MODEL_MIN_DAYS} days of busyness_features"
                )
                continue
            champion = mlflow_tracking.for_city(city.id).champion()
            if champion is not None:
                waiting.append(f"{city.id}: a champion exists (version {champion.version})")
                continue
            newest = context.instance.fetch_materializations(features, limit=1).records
            requests.append(
                dg.RunRequest(
                    run_key=f"first-model:{city.id}:{newest[0].storage_id}",
                    asset_selection=training_keys(city),
                    tags={TRIGGER_TAG: "first_model", CITY_TAG: city.id},
                )
            )
        if requests and context.instance.get_runs_count(filters=_ACTIVE_RUNS):
            return dg.SkipReason(
                "runs are queued or in progress; waiting for the backlog to settle"
            )
        return requests or dg.SkipReason("; ".join(waiting))

    return first_model_sensor
