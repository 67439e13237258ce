"""Asset checks. Data: contract schema, row conservation, freshness, unique hourly keys.
Model: the promotion gates on ``model_evaluation``, blocking, so a refused candidate stops
``champion_model`` (and everything after it) in the same run.

Checks on partitioned assets declare ``partitions_def`` so each evaluates one partition
instead of loading every partition of its asset.
"""

import datetime
import warnings

import dagster as dg
import pandas as pd

from geo_busyness.assets.metadata import city_in, city_key, shown
from geo_busyness.core.city import City
from geo_busyness.core.features import HOURLY_KEY, duplicate_hourly_keys
from geo_busyness.core.lifecycle import (
    Evaluation,
    GateResult,
    beats_every_baseline,
    not_worse_than_champion,
    predictions_are_sane,
)
from geo_busyness.core.quality import quarantine_verdict
from geo_busyness.core.schema import schema_problems
from geo_busyness.partitions import city_partitions, latest_complete_day
from geo_busyness.resources.promotion import PromotionPolicyResource
from geo_busyness.resources.quality import DataQualityPolicy

MAX_DATA_LAG_DAYS = 2


def _gate_result(gate: GateResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=gate.passed,
        description=gate.description,
        metadata={"verdict": gate.description, **{k: shown(v) for k, v in gate.metadata.items()}},
    )


def build_checks(city: City, catalog: str) -> list[dg.AssetChecksDefinition]:
    """The data and model checks of ``city`` (``catalog``: the catalog file, for messages).
    Dagster marks a check's ``partitions_def`` preview; we rely on it on purpose (a check of
    one day reads that day only), so its warning is silenced here instead of on every console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return _city_checks(city, catalog)


def _city_checks(city: City, catalog: str) -> list[dg.AssetChecksDefinition]:
    partitions = city_partitions(city)

    def day_counts_ins() -> dict[str, dg.AssetIn]:
        """The day's raw and quarantined rows, with one narrow column each: what the counting
        checks on clean pings read beside them."""
        return {
            "raw_courier_pings": city_in(
                city, "raw_courier_pings", metadata={"columns": ["source_file"]}
            ),
            "quarantined_pings": city_in(
                city, "quarantined_pings", metadata={"columns": ["reason"]}
            ),
        }

    @dg.asset_check(
        asset=city_key(city, "clean_courier_pings"),
        partitions_def=partitions,
        blocking=True,
        description="Clean pings have exactly the typed columns of the data contract.",
    )
    def clean_pings_match_contract(clean_courier_pings: pd.DataFrame) -> dg.AssetCheckResult:
        problems = schema_problems(clean_courier_pings)
        return dg.AssetCheckResult(
            passed=not problems, metadata={"problems": dg.MetadataValue.json(problems)}
        )

    @dg.asset_check(
        asset=city_key(city, "clean_courier_pings"),
        partitions_def=partitions,
        blocking=True,
        additional_ins=day_counts_ins(),
        description="Nothing is lost: raw rows = clean rows + quarantined rows for the day.",
    )
    def rows_are_conserved(
        clean_courier_pings: pd.DataFrame,
        raw_courier_pings: pd.DataFrame,
        quarantined_pings: pd.DataFrame,
    ) -> dg.AssetCheckResult:
        raw, clean, quarantined = (
            len(raw_courier_pings),
            len(clean_courier_pings),
            len(quarantined_pings),
        )
        return dg.AssetCheckResult(
            passed=raw == clean + quarantined,
            metadata={
                "raw": raw,
                "clean": clean,
                "quarantined": quarantined,
                "lost": raw - clean - quarantined,
            },
        )

    @dg.asset_check(
        asset=city_key(city, "clean_courier_pings"),
        partitions_def=partitions,
        blocking=True,
        additional_ins=day_counts_ins(),
        description=(
            "At most data_quality_policy.max_quarantine_share (20% by default) of the day's rows "
            "are quarantined; above it the day's busyness and features wait, and the message "
            "names the main reason and its likely cause (e.g. a wrong centre in the catalog)."
        ),
    )
    def quarantine_share_is_low(
        clean_courier_pings: pd.DataFrame,
        raw_courier_pings: pd.DataFrame,
        quarantined_pings: pd.DataFrame,
        data_quality_policy: DataQualityPolicy,
    ) -> dg.AssetCheckResult:
        verdict = quarantine_verdict(
            len(raw_courier_pings),
            quarantined_pings["reason"],
            city,
            catalog,
            data_quality_policy.max_quarantine_share,
        )
        return dg.AssetCheckResult(
            passed=verdict.passed,
            description=verdict.description,
            metadata={
                "quarantined_share": round(verdict.share, 4),
                "max_quarantine_share": data_quality_policy.max_quarantine_share,
                "top_reason": str(verdict.top_reason or "none"),
                "top_reason_share": round(verdict.top_reason_share, 4),
            },
        )

    @dg.asset_check(
        asset=city_key(city, "hex_hourly_busyness"),
        partitions_def=partitions,
        blocking=True,
        description=f"Each {HOURLY_KEY} appears once.",
    )
    def hourly_keys_are_unique(hex_hourly_busyness: pd.DataFrame) -> dg.AssetCheckResult:
        duplicates = duplicate_hourly_keys(hex_hourly_busyness)
        return dg.AssetCheckResult(passed=duplicates == 0, metadata={"duplicated_rows": duplicates})

    @dg.asset_check(
        asset=city_key(city, "raw_courier_pings"),
        description=(
            f"The newest ingested day is at most {MAX_DATA_LAG_DAYS} days older than the day in "
            "progress (UTC, or the day after GEO_BUSYNESS_END_DATE); warns, does not block."
        ),
    )
    def raw_pings_are_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        materialized = context.instance.get_materialized_partitions(
            city_key(city, "raw_courier_pings")
        )
        latest = latest_complete_day(city)
        today = latest + datetime.timedelta(days=1) if latest else partitions.start.date()
        if not materialized:
            return dg.AssetCheckResult(
                passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={"newest_day": "none"}
            )
        newest = max(materialized)
        lag = (today - datetime.date.fromisoformat(newest)).days
        return dg.AssetCheckResult(
            passed=lag <= MAX_DATA_LAG_DAYS,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"newest_day": newest, "lag_days": lag},
        )

    @dg.asset_check(
        asset=city_key(city, "model_evaluation"),
        blocking=True,
        description=(
            "The candidate's test MAE is lower than the best baseline's (zero, seasonal naive, "
            "4-week same-hour mean, yesterday, the PoC model when trained) by the policy's margin."
        ),
    )
    def candidate_beats_every_baseline(
        model_evaluation: Evaluation, promotion_policy: PromotionPolicyResource
    ) -> dg.AssetCheckResult:
        return _gate_result(beats_every_baseline(model_evaluation, promotion_policy.to_policy()))

    @dg.asset_check(
        asset=city_key(city, "model_evaluation"),
        blocking=True,
        description=(
            "The candidate's test MAE is at most the policy's tolerance above the current champion's "
            "on the same test slice (passes when there is no champion yet)."
        ),
    )
    def candidate_not_worse_than_champion(
        model_evaluation: Evaluation, promotion_policy: PromotionPolicyResource
    ) -> dg.AssetCheckResult:
        return _gate_result(not_worse_than_champion(model_evaluation, promotion_policy.to_policy()))

    @dg.asset_check(
        asset=city_key(city, "model_evaluation"),
        blocking=True,
        description="Test predictions are finite, non-negative and not constant.",
    )
    def candidate_predictions_are_sane(model_evaluation: Evaluation) -> dg.AssetCheckResult:
        return _gate_result(predictions_are_sane(model_evaluation))

    return [
        clean_pings_match_contract,
        rows_are_conserved,
        quarantine_share_is_low,
        hourly_keys_are_unique,
        raw_pings_are_fresh,
        candidate_beats_every_baseline,
        candidate_not_worse_than_champion,
        candidate_predictions_are_sane,
    ]
