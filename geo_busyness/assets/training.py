"""Training group: training set → candidate model (MLflow run) → evaluation → champion.

The blocking checks on ``model_evaluation`` (``checks.py``) gate ``champion_model``, which
re-applies the same rules before it moves the registry alias, so a candidate that failed them
cannot become the champion even when ``champion_model`` is materialized on its own.
"""

import dataclasses
import importlib.metadata
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from geo_busyness.assets.metadata import city_asset, city_in, picture_path, preview, shown
from geo_busyness.automation import after_passed_checks
from geo_busyness.core.city import City
from geo_busyness.core.features import TARGET_COLUMN, feature_columns
from geo_busyness.core.lifecycle import (
    BASELINES,
    CHAMPION,
    MODEL,
    POC_BASELINE,
    SEASONAL_NAIVE,
    SPLIT_COLUMN,
    SPLITS,
    CandidateModel,
    Evaluation,
    baseline_predictions,
    daily_totals,
    evaluate,
    promotion_gates,
    resolution_advice,
    split_from_training_set,
    training_set_from_features,
)
from geo_busyness.core.model import (
    SplitConfig,
    TrainingConfig,
    metrics_table,
    predict,
    predict_orders,
    train_poc_baseline,
)
from geo_busyness.core.model_card import (
    ModelCard,
    busiest_contributions,
    feature_importance,
    model_card_html,
    summary_markdown,
)
from geo_busyness.core.plots import hexagon_map_png, predicted_vs_actual_png
from geo_busyness.resources.promotion import PromotionPolicyResource
from geo_busyness.resources.reports import ReportStore, report_link
from geo_busyness.resources.tracking import Champion, MlflowTracking
from geo_busyness.resources.training_backend import TrainingBackend

GROUP = "training"
OBJECT_IO = "object_io_manager"
_SPLIT_DEFAULTS = SplitConfig()
_TRAINING_DEFAULTS = TrainingConfig()


class TrainingSetConfig(dg.Config):
    window_days: int = Field(
        default=28, description="Calendar days of busyness_features, ending at the latest one."
    )
    validation_days: int = Field(default=_SPLIT_DEFAULTS.validation_days)
    test_days: int = Field(default=_SPLIT_DEFAULTS.test_days)
    gap_hours: int = Field(
        default=_SPLIT_DEFAULTS.gap_hours,
        description="Hours dropped between train/validation and validation/test.",
    )


class BusynessModelConfig(dg.Config):
    objectives: list[str] = Field(
        default=list(_TRAINING_DEFAULTS.objectives),
        description="XGBoost count objectives compared on validation MAE.",
    )
    n_trials: int = Field(default=_TRAINING_DEFAULTS.n_trials)
    time_budget_s: float = Field(
        default=_TRAINING_DEFAULTS.time_budget_s, description="Wall-clock budget of the search."
    )
    max_rounds: int = Field(default=_TRAINING_DEFAULTS.max_rounds)
    early_stopping_rounds: int = Field(default=_TRAINING_DEFAULTS.early_stopping_rounds)
    search_rows: int = Field(
        default=_TRAINING_DEFAULTS.search_rows,
        description="Train rows sampled for the search; the winner is refitted on all rows.",
    )
    seed: int = 0
    train_poc_baseline: bool = Field(
        default=False,
        description=(
            "Also train the PoC's RandomForest + GridSearchCV baseline (about a minute or more "
            "of a training; off for automated retrains, on in the demo and the benchmark)."
        ),
    )
    poc_cv_folds: int = Field(default=5, description="GridSearchCV folds of the PoC baseline.")

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            objectives=tuple(self.objectives),
            n_trials=self.n_trials,
            time_budget_s=self.time_budget_s,
            max_rounds=self.max_rounds,
            early_stopping_rounds=self.early_stopping_rounds,
            search_rows=self.search_rows,
            seed=self.seed,
        )


def _features(city: City, frame: pd.DataFrame) -> list[str]:
    names = feature_columns(city.n_restaurant_clusters)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise dg.Failure(
            f"the training set lacks feature columns {missing}: were busyness_features "
            f"materialized before {city.id}'s restaurant_clusters changed in the catalog?"
        )
    return names


def _md_table(frame: pd.DataFrame, digits: int = 4) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.round(digits).to_markdown())


def _champion_predictions(
    test: pd.DataFrame,
    candidate: CandidateModel,
    mlflow_tracking: MlflowTracking,
    model: np.ndarray,
) -> tuple[np.ndarray | None, str | None, str]:
    """The current champion's predictions on the same test rows, its version, and a note."""
    champion_model, champion = mlflow_tracking.load_champion()
    if champion is None:
        return None, None, "no champion registered yet"
    if champion.run_id == candidate.mlflow_run_id:
        return model, champion.version, "the candidate is the champion"
    names = champion_model.get_booster().feature_names or []
    missing = [name for name in names if name not in test.columns]
    if missing:
        return None, champion.version, f"champion needs features absent here: {missing}"
    return predict_orders(champion_model, test, names), champion.version, ""


def _range_text(time_range) -> str:
    if time_range is None:
        return "unknown"
    return f"{time_range.start:%Y-%m-%d %H:%M} to {time_range.end:%Y-%m-%d %H:%M} UTC"


def _model_card(
    context: dg.AssetExecutionContext,
    city: City,
    candidate: CandidateModel,
    evaluation: Evaluation,
    gates: list,
    champion: Champion,
    tracking: MlflowTracking,
) -> ModelCard:
    """The card of the version just promoted, with its lineage: the Dagster run, the MLflow run
    and registry version, and the days of busyness_features it learned from and was tested on."""
    first = evaluation.train_range.start if evaluation.train_range else evaluation.test_range.start
    days = f"{first:%Y-%m-%d} to {evaluation.test_range.end - pd.Timedelta(hours=1):%Y-%m-%d}"
    links = {
        "Dagster run": context.run.run_id,
        "busyness_features partitions": days,
        "MLflow run": tracking.run_url(champion.run_id) or champion.run_id,
        "registry version": tracking.model_version_url(champion.version)
        or f"{tracking.registered_model_name} version {champion.version}",
        "model URI": champion.model_uri,
    }
    return ModelCard(
        city=f"{city.name} ({city.id}, H3 resolution {city.h3_resolution})",
        version=champion.version,
        objective=candidate.trained.objective,
        train_range=_range_text(evaluation.train_range),
        train_rows=evaluation.train_rows,
        test_range=_range_text(evaluation.test_range),
        test_rows=evaluation.test_rows,
        metrics=evaluation.metrics,
        by_band=evaluation.by_band if evaluation.by_band is not None else pd.DataFrame(),
        gates=[(gate.name, gate.passed, gate.description) for gate in gates],
        importance=evaluation.importance if evaluation.importance is not None else pd.Series(),
        busiest=evaluation.busiest if evaluation.busiest is not None else pd.DataFrame(),
        links=links,
    )


def build_training(city: City) -> list:
    """The training assets of ``city``: its own training set, candidate, evaluation and
    champion (a registered MLflow model per city)."""

    @dg.asset(
        **city_asset(city, GROUP),
        kinds={"pandas", "parquet"},
        ins={
            "busyness_features": city_in(
                city,
                "busyness_features",
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"allow_missing_partitions": True, "lazy": True},
            )
        },
        description=(
            "busyness_features of the last `window_days` days, split by time into train / "
            "validation / test with a gap between slices (column `split`); never a random split."
        ),
    )
    def training_set(
        context: dg.AssetExecutionContext, config: TrainingSetConfig, busyness_features: dict
    ) -> pd.DataFrame:
        split = SplitConfig(
            validation_days=config.validation_days,
            test_days=config.test_days,
            gap_hours=config.gap_hours,
        )
        try:
            frame, ranges = training_set_from_features(busyness_features, config.window_days, split)
        except ValueError as error:
            raise dg.Failure(str(error)) from error
        counts = frame[SPLIT_COLUMN].value_counts()
        advice = resolution_advice(frame, city.h3_resolution)
        if advice:
            context.log.warning(f"{city.id}: {advice}")
        context.add_output_metadata(
            {
                "partitions_available": len(busyness_features),
                "zero_target_share": round(float((frame[TARGET_COLUMN] == 0).mean()), 4),
                "resolution_advice": advice or "none: the city is dense enough at its resolution",
                **{f"{name}_rows": int(counts.get(name, 0)) for name in SPLITS},
                "time_ranges": dg.MetadataValue.md(
                    pd.DataFrame(
                        {
                            "start (UTC)": [str(r.start) for r in ranges.values()],
                            "end (UTC, exclusive)": [str(r.end) for r in ranges.values()],
                        },
                        index=list(ranges),
                    ).to_markdown()
                ),
                "hexagons": int(frame["h3_cell"].nunique()),
                "preview": preview(frame),
            }
        )
        return frame

    @dg.asset(
        **city_asset(city, GROUP),
        kinds={"xgboost", "mlflow"},
        io_manager_key=OBJECT_IO,
        ins={"training_set": city_in(city, "training_set")},
        # Sizes this step's pod under the k8s executor (ignored by the other executors): the search
        # uses every core it gets, and 1M feature rows peak at ~3.2 GB (BENCHMARKS.md "Model").
        op_tags={
            "dagster-k8s/config": {
                "container_config": {
                    "resources": {
                        "requests": {"cpu": "4", "memory": "8Gi"},
                        "limits": {"memory": "8Gi"},
                    }
                }
            }
        },
        description=(
            "Candidate XGBoost count model (Poisson vs Tweedie, early-stopped, time-boxed search) "
            "plus the PoC's RandomForest baseline on the same split; logged to MLflow with params, "
            "metrics, feature importances, signature and input example."
        ),
    )
    def busyness_model(
        context: dg.AssetExecutionContext,
        config: BusynessModelConfig,
        training_set: pd.DataFrame,
        mlflow_tracking: MlflowTracking,
        training_backend: TrainingBackend,
    ) -> CandidateModel:
        import mlflow
        import mlflow.xgboost
        from mlflow.models import infer_signature

        split = split_from_training_set(training_set)
        names = _features(city, training_set)
        mlflow_tracking = mlflow_tracking.for_city(city.id)
        with mlflow_tracking.start_run(context, "busyness_model") as run:
            # Where the candidate trains is the resource's business; baselines stay in-process.
            outcome = training_backend.train(context, split, names, config.training_config())
            trained = outcome.trained
            poc, poc_seconds = (
                train_poc_baseline(split, names, seed=config.seed, cv=config.poc_cv_folds)
                if config.train_poc_baseline
                else (None, None)
            )
            validation = {
                MODEL: predict(trained, split.validation, names),
                **baseline_predictions(split.validation),
            }
            if poc is not None:
                validation[POC_BASELINE] = poc.predict(split.validation[names])
            scores = metrics_table(split.validation[TARGET_COLUMN], validation)
            importance = (
                pd.Series(
                    trained.model.get_booster().get_score(importance_type="gain"), name="gain"
                )
                .reindex(names, fill_value=0.0)
                .sort_values(ascending=False)
            )
            mlflow.log_params(
                {
                    **config.model_dump(),
                    "training_backend": outcome.backend,
                    **outcome.details,
                    "chosen_objective": trained.objective,
                    **{f"chosen_{key}": value for key, value in trained.params.items()},
                    "best_iteration": trained.best_iteration,
                    "features": len(names),
                    **{f"{name}_rows": len(getattr(split, name)) for name in SPLITS},
                    **{f"{name}_start": str(r.start) for name, r in split.ranges.items()},
                    **{f"{name}_end": str(r.end) for name, r in split.ranges.items()},
                }
            )
            mlflow.log_metrics(
                {
                    **{
                        f"validation_{predictor}_{metric}": float(value)
                        for predictor, row in scores.iterrows()
                        for metric, value in row.items()
                        if np.isfinite(value)
                    },
                    "training_seconds": trained.seconds,
                    **({"poc_training_seconds": poc_seconds} if poc_seconds is not None else {}),
                }
            )
            mlflow.log_dict(importance.to_dict(), "feature_importance_gain.json")
            mlflow.log_dict({"fits": trained.search_log}, "search_log.json")
            # As floats: every feature may be missing (NaN) at inference time.
            example = split.validation[names].head(5).astype("float64")
            logged = mlflow.xgboost.log_model(
                trained.model,
                name="model",
                signature=infer_signature(example, predict_orders(trained.model, example, names)),
                input_example=example,
                # Explicit: inferring them imports and inspects the environment (~9 s).
                pip_requirements=[
                    f"xgboost=={importlib.metadata.version('xgboost')}",
                    f"pandas=={pd.__version__}",
                    f"numpy=={np.__version__}",
                ],
                model_format="ubj",
            )
            run_id = run.mlflow_run_id
        candidate = CandidateModel(
            trained=trained,
            poc_baseline=poc.best_estimator_ if poc is not None else None,
            poc_params=dict(poc.best_params_) if poc is not None else {},
            poc_seconds=poc_seconds,
            mlflow_run_id=run_id,
            model_uri=logged.model_uri,
        )
        context.add_output_metadata(
            {
                "training_backend": outcome.backend,
                **outcome.details,
                "objective": trained.objective,
                "params": dg.MetadataValue.json(trained.params),
                "best_iteration": trained.best_iteration,
                "training_seconds": round(trained.seconds, 2),
                **(
                    {
                        "poc_training_seconds": round(poc_seconds, 2),
                        "poc_params": dg.MetadataValue.json(candidate.poc_params),
                        "speedup_vs_poc": round(poc_seconds / trained.seconds, 1),
                    }
                    if poc_seconds is not None
                    else {}
                ),
                "validation_metrics": _md_table(scores),
                "validation_mae": float(scores.loc[MODEL, "mae"]),
                "feature_importance_top15": _md_table(importance.head(15).to_frame(), 2),
                "search": dg.MetadataValue.md(
                    pd.DataFrame(trained.search_log).round(4).to_markdown()
                ),
                "model_uri": logged.model_uri,
                **mlflow_tracking.run_metadata(run_id),
            }
        )
        return candidate

    @dg.asset(
        **city_asset(city, GROUP),
        kinds={"xgboost", "mlflow"},
        io_manager_key=OBJECT_IO,
        ins={
            "training_set": city_in(city, "training_set"),
            "busyness_model": city_in(city, "busyness_model"),
        },
        description=(
            "Test-slice MAE, RMSE, R² and Poisson deviance of the candidate, every baseline (zero, "
            "seasonal naive, 4-week same-hour mean, yesterday, the PoC model when trained) and the "
            "current champion; error by hour of day and by hexagon, with a "
            "predicted-vs-actual plot and an error map. Logged into the candidate's MLflow run."
        ),
    )
    def model_evaluation(
        context: dg.AssetExecutionContext,
        training_set: pd.DataFrame,
        busyness_model: CandidateModel,
        mlflow_tracking: MlflowTracking,
        report_store: ReportStore,
    ) -> Evaluation:
        mlflow_tracking = mlflow_tracking.for_city(city.id)
        split = split_from_training_set(training_set)
        test = split.test
        names = busyness_model.feature_names
        predictions = {
            MODEL: predict(busyness_model.trained, test, names),
            **baseline_predictions(test),
        }
        if busyness_model.poc_baseline is not None:
            predictions[POC_BASELINE] = busyness_model.poc_baseline.predict(test[names])
        champion, version, note = _champion_predictions(
            test, busyness_model, mlflow_tracking, predictions[MODEL]
        )
        if champion is not None:
            predictions[CHAMPION] = champion
        evaluation = dataclasses.replace(
            evaluate(test, predictions, busyness_model.mlflow_run_id, version, note),
            train_range=split.ranges["train"],
            train_rows=len(split.train),
            importance=feature_importance(busyness_model.trained),
            busiest=busiest_contributions(busyness_model.trained, test),
        )

        compared = {
            name: predictions[name]
            for name in (MODEL, SEASONAL_NAIVE, POC_BASELINE)
            if name in predictions
        }
        scatter = predicted_vs_actual_png(
            test[TARGET_COLUMN].to_numpy(),
            compared,
            f"Predicted vs actual, {evaluation.test_rows} test rows",
        )
        error_map = hexagon_map_png(
            evaluation.by_hexagon.index.to_numpy(),
            evaluation.by_hexagon["mae"].to_numpy(),
            "Model MAE per hexagon (test slice)",
            "MAE (orders)",
        )
        client = mlflow_tracking.client()
        run_id = busyness_model.mlflow_run_id
        for predictor, row in evaluation.metrics.iterrows():
            for metric, value in row.items():
                if np.isfinite(value):
                    client.log_metric(run_id, f"test_{predictor}_{metric}", float(value))
        with tempfile.TemporaryDirectory() as folder:
            for name, png in (("predicted_vs_actual.png", scatter), ("error_map.png", error_map)):
                (Path(folder) / name).write_bytes(png)
            evaluation.by_hour.to_csv(Path(folder) / "error_by_hour.csv")
            evaluation.by_hexagon.to_csv(Path(folder) / "error_by_hexagon.csv")
            client.log_artifacts(run_id, folder, artifact_path="evaluation")

        context.add_output_metadata(
            {
                "test_metrics": _md_table(evaluation.metrics),
                "model_mae": shown(evaluation.mae(MODEL)),
                **{
                    f"{name}_mae": shown(evaluation.mae(name))
                    for name in BASELINES
                    if name in predictions and name != POC_BASELINE
                },
                **(
                    {"poc_mae": shown(evaluation.mae(POC_BASELINE))}
                    if POC_BASELINE in predictions
                    else {}
                ),
                **(
                    {"champion_mae": shown(evaluation.mae(CHAMPION))}
                    if CHAMPION in predictions
                    else {}
                ),
                "champion_version": str(version or "none"),
                "champion_note": note or "compared on the same test slice",
                "prediction_problems": dg.MetadataValue.json(evaluation.problems),
                "predicted_vs_actual": report_store.picture(
                    picture_path(context, city, "predicted_vs_actual"),
                    scatter,
                    "predicted vs actual",
                ),
                "error_map": report_store.picture(
                    picture_path(context, city, "error_map"), error_map, "error map"
                ),
                # calibration: a forecast that sums to a third of a normal day shows here
                "daily_totals": _md_table(daily_totals(test, predictions[MODEL])),
                "error_by_hour_of_day": _md_table(evaluation.by_hour),
                # the busy hexagon-hours drive courier positioning: errors there, apart
                "error_by_busyness_band": _md_table(evaluation.by_band),
                "worst_hexagons": _md_table(evaluation.by_hexagon.nlargest(10, "mae")),
                "test_rows": evaluation.test_rows,
                "test_range": f"{evaluation.test_range.start} to {evaluation.test_range.end}",
                **mlflow_tracking.run_metadata(run_id),
            }
        )
        return evaluation

    @dg.asset(
        **city_asset(city, GROUP),
        kinds={"mlflow"},
        io_manager_key=OBJECT_IO,
        ins={
            "busyness_model": city_in(city, "busyness_model"),
            "model_evaluation": city_in(city, "model_evaluation"),
        },
        automation_condition=after_passed_checks(city),
        description=(
            "The MLflow registry's `champion` alias, moved to the candidate only when every promotion "
            "gate passed (the blocking checks on model_evaluation); the replaced version is kept "
            "as the new version's `previous_champion` tag for rollback (`geo-busyness rollback`)."
        ),
    )
    def champion_model(
        context: dg.AssetExecutionContext,
        busyness_model: CandidateModel,
        model_evaluation: Evaluation,
        mlflow_tracking: MlflowTracking,
        promotion_policy: PromotionPolicyResource,
        report_store: ReportStore,
    ) -> Champion:
        mlflow_tracking = mlflow_tracking.for_city(city.id)
        if model_evaluation.candidate_run_id != busyness_model.mlflow_run_id:
            raise dg.Failure(
                f"model_evaluation is for MLflow run {model_evaluation.candidate_run_id}, but "
                f"busyness_model is run {busyness_model.mlflow_run_id}: materialize model_evaluation "
                "(and its checks) for this candidate first"
            )
        gates = promotion_gates(model_evaluation, promotion_policy.to_policy())
        failed = [gate for gate in gates if not gate.passed]
        if failed:
            current = mlflow_tracking.champion()
            raise dg.Failure(
                "candidate refused, champion unchanged "
                f"({'version ' + current.version if current else 'none yet'}): "
                + "; ".join(f"{gate.name}: {gate.description}" for gate in failed)
            )
        champion, changed = mlflow_tracking.promote(
            busyness_model.model_uri, busyness_model.mlflow_run_id
        )
        card = _model_card(
            context, city, busyness_model, model_evaluation, gates, champion, mlflow_tracking
        )
        location = report_store.save(
            f"model_cards/{city.id}/version-{champion.version}.html",
            model_card_html(card).encode(),
            "text/html; charset=utf-8",
        )
        context.add_output_metadata(
            {
                "model_card": report_link(location),
                "summary": dg.MetadataValue.md(summary_markdown(card)),
                "version": champion.version,
                "previous_version": champion.previous_version or "none",
                "changed": changed,
                "model_uri": champion.model_uri,
                "registered_model": mlflow_tracking.registered_model_name,
                **mlflow_tracking.run_metadata(champion.run_id),
                **(
                    {"mlflow_model_version": dg.MetadataValue.url(url)}
                    if (url := mlflow_tracking.model_version_url(champion.version))
                    else {}
                ),
            }
        )
        return champion

    return [training_set, busyness_model, model_evaluation, champion_model]
