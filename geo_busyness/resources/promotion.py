"""The promotion policy shared by the blocking model checks and ``champion_model``."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from geo_busyness.core.lifecycle import PromotionPolicy

_DEFAULTS = PromotionPolicy()


class PromotionPolicyResource(dg.ConfigurableResource):
    """How much better than seasonal naive a candidate must be, and how much worse than the
    current champion it may be, to become the champion."""

    min_improvement_vs_naive: float = Field(
        default=_DEFAULTS.min_improvement_vs_naive,
        description="Required relative MAE improvement over seasonal naive (0.10 = 10% lower).",
    )
    champion_tolerance: float = Field(
        default=_DEFAULTS.champion_tolerance,
        description="Allowed relative MAE increase over the current champion (0.02 = 2%).",
    )

    def to_policy(self) -> PromotionPolicy:
        return PromotionPolicy(
            min_improvement_vs_naive=self.min_improvement_vs_naive,
            champion_tolerance=self.champion_tolerance,
        )
