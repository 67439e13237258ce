"""The promotion policy shared by the blocking model checks and ``champion_model``."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from geo_busyness.core.lifecycle import PromotionPolicy

_DEFAULTS = PromotionPolicy()


class PromotionPolicyResource(dg.ConfigurableResource):
    """How much better than the best baseline a candidate must be, and how much worse than the
    current champion it may be, to become the champion."""

    min_improvement_vs_baselines: float = Field(
        default=_DEFAULTS.min_improvement_vs_baselines,
        description=(
            "Required relative MAE improvement over the best of the baselines (zero, seasonal "
            "naive, 4-week same-hour mean, yesterday, and the PoC model when trained), on the "
            "same test rows (0.10 = 10% lower)."
        ),
    )
    champion_tolerance: float = Field(
        default=_DEFAULTS.champion_tolerance,
        description="Allowed relative MAE increase over the current champion (0.02 = 2%).",
    )

    def to_policy(self) -> PromotionPolicy:
        return PromotionPolicy(
            min_improvement_vs_baselines=self.min_improvement_vs_baselines,
            champion_tolerance=self.champion_tolerance,
        )
