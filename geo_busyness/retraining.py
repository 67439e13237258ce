"""The self-retraining loop: drift (or the weekly schedule) requests a retrain; the result
reaches the endpoint only through the blocking promotion checks. Before any model exists,
``first_model_sensor`` trains the first one once enough days are featurized.

``retrain_job`` materializes the training group. A candidate that passes the gates becomes the
champion, and automation then refreshes the latest forecast and redeploys
(``busyness_forecast`` and ``endpoint_deployment`` depend on ``champion_model``). A candidate
that fails them fails its blocking check: the run fails with the check's verdict and the
current champion keeps serving.
"""

import dagster as dg

from geo_busyness.assets.training import TrainingSetConfig
from geo_busyness.core.drift import needs_retraining
from geo_busyness.resources.reports import DriftPolicy
from geo_busyness.resources.settings import sensor_interval_seconds
from geo_busyness.resources.tracking import MlflowTracking

TRIGGER_TAG = "geo_busyness/trigger"
# Training runs get a bigger task under the ECS run launcher (ignored elsewhere): 4 vCPU for the
# search, 16 GB for ~1M feature rows with headroom (BENCHMARKS.md "Model": 3.2 GB peak).
TRAINING_RUN_TAGS = {"ecs/cpu": "4096", "ecs/memory": "16384"}

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.groups("training"),
    tags=TRAINING_RUN_TAGS,
    description=(
        "Retrain: training set → candidate → evaluation → blocking checks → champion. "
        "Requested by drift_retrain_sensor and weekly_retrain."
    ),
)

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    tags={TRIGGER_TAG: "schedule"},
    description="Regular retrain, Mondays 03:00 UTC, whatever the drift.",
)


DRIFT_REPORT = dg.AssetKey("drift_report")


@dg.sensor(
    job=retrain_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(),
    description=(
        "Requests a retrain when a new drift report's drift share or forecast error growth "
        "passes the drift_policy thresholds (one retrain for however many reports a tick sees)."
    ),
)
def drift_retrain_sensor(context: dg.SensorEvaluationContext, drift_policy: DriftPolicy):
    # Cursor: storage id of the last report looked at. Without one (first tick), only the
    # newest report counts: old reports must not retrain a model trained after them.
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRIFT_REPORT, after_storage_id=after),
        limit=1 if after is None else 1000,
        ascending=after is not None,
    ).records
    if not records:
        return dg.SkipReason("no new drift report")
    context.update_cursor(str(max(record.storage_id for record in records)))
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
        return dg.SkipReason(
            "; ".join(f"drift_report[{day}]: {reason}" for _, day, reason, _ in verdicts)
            or "new drift reports carry no drift_share"
        )
    _, day, reason, storage_id = due[-1]
    context.log.info(f"drift_report[{day}]: {reason}; requesting a retrain")
    return dg.RunRequest(
        run_key=f"drift:{storage_id}",
        tags={TRIGGER_TAG: "drift", "geo_busyness/drift_day": str(day)},
    )


FEATURES = dg.AssetKey("busyness_features")
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


@dg.sensor(
    job=retrain_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=sensor_interval_seconds(),
    description=(
        "Cold start: while the registry has no champion, trains the first model once "
        f"{FIRST_MODEL_MIN_DAYS} days are featurized and no run is queued or running (the "
        "landing backlog is done). A refused first candidate is retried when features change."
    ),
)
def first_model_sensor(context: dg.SensorEvaluationContext, mlflow_tracking: MlflowTracking):
    days = context.instance.get_materialized_partitions(FEATURES)
    if len(days) < FIRST_MODEL_MIN_DAYS:
        return dg.SkipReason(
            f"{len(days)} of {FIRST_MODEL_MIN_DAYS} days of busyness_features materialized"
        )
    if context.instance.get_runs_count(filters=_ACTIVE_RUNS):
        return dg.SkipReason("runs are queued or in progress; waiting for the backlog to settle")
    champion = mlflow_tracking.champion()
    if champion is not None:
        return dg.SkipReason(f"a champion exists (version {champion.version})")
    newest = context.instance.fetch_materializations(FEATURES, limit=1).records
    return dg.RunRequest(
        run_key=f"first-model:{newest[0].storage_id}",
        tags={TRIGGER_TAG: "first_model"},
    )
