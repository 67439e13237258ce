"""Where ``busyness_model`` trains the candidate, as Dagster resources.

The asset takes ``training_backend: TrainingBackend`` and calls ``training_backend.train(...)``;
whether that runs in the step's own process (:class:`LocalTrainingBackend`, the default) or as
a SageMaker training job of the project's image (:class:`SageMakerTrainingBackend`, for
training sets larger than the Dagster host) is resource configuration. Both run
:func:`~geo_busyness.core.model.train_busyness_model` on the same split, so they return the
same model for the same rows, configuration and seed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import dagster as dg
from pydantic import Field

from geo_busyness.core.model import Split, TrainedModel, TrainingConfig, train_busyness_model
from geo_busyness.deploy.sagemaker_training import (
    SageMakerTraining,
    SageMakerTrainingConfig,
    training_frame,
)


@dataclass(frozen=True)
class TrainingOutcome:
    """The model, the backend that trained it, and where to find that training (metadata)."""

    trained: TrainedModel
    backend: str
    details: dict[str, str] = field(default_factory=dict)


class TrainingBackend(dg.ConfigurableResource, ABC):
    """Common base: what ``busyness_model`` needs from any place that trains."""

    @abstractmethod
    def train(
        self,
        context: dg.AssetExecutionContext,
        split: Split,
        feature_names: list[str],
        config: TrainingConfig,
    ) -> TrainingOutcome:
        """Search and fit the XGBoost model on ``split`` (see ``train_busyness_model``)."""


class LocalTrainingBackend(TrainingBackend):
    """In the step's process: no setup, bounded by the Dagster host's memory and cores."""

    def train(
        self,
        context: dg.AssetExecutionContext,
        split: Split,
        feature_names: list[str],
        config: TrainingConfig,
    ) -> TrainingOutcome:
        return TrainingOutcome(train_busyness_model(split, feature_names, config), "local")


class SageMakerTrainingBackend(TrainingBackend):
    """A SageMaker training job of the project's image (``train``); the step waits for it.
    Credentials come from the AWS default chain."""

    role_arn: str = Field(description="Execution role SageMaker assumes to pull image and data.")
    image_uri: str = Field(description="ECR image of this project (runs `train`).")
    bucket: str = Field(description="S3 bucket for the training set and the model artifact.")
    prefix: str = Field(
        default="sagemaker/training", description="Key prefix; each job writes <prefix>/<job>/."
    )
    instance_type: str = "ml.m5.4xlarge"
    instance_count: int = Field(default=1, ge=1, le=1, description="Training is single-node.")
    volume_size_gb: int = Field(default=30, ge=1)
    max_runtime_s: int = Field(
        default=4 * 3600, ge=1, description="SageMaker stops the job after this long."
    )
    region: str | None = Field(default=None, description="Default: the AWS default chain's.")
    endpoint_url: str | None = Field(
        default=None, description="SageMaker API override (tests, VPC endpoints)."
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 API override.")
    poll_delay_seconds: float = 30.0
    wait_timeout_seconds: float = Field(
        default=5 * 3600.0, description="How long the step waits for the job to end."
    )

    def to_config(self) -> SageMakerTrainingConfig:
        return SageMakerTrainingConfig(
            role_arn=self.role_arn,
            image_uri=self.image_uri,
            bucket=self.bucket,
            prefix=self.prefix,
            instance_type=self.instance_type,
            instance_count=self.instance_count,
            volume_size_gb=self.volume_size_gb,
            max_runtime_s=self.max_runtime_s,
            region=self.region,
            endpoint_url=self.endpoint_url,
            s3_endpoint_url=self.s3_endpoint_url,
            poll_delay_seconds=self.poll_delay_seconds,
            wait_timeout_seconds=self.wait_timeout_seconds,
        )

    def train(
        self,
        context: dg.AssetExecutionContext,
        split: Split,
        feature_names: list[str],
        config: TrainingConfig,
    ) -> TrainingOutcome:
        job = SageMakerTraining(self.to_config(), log=context.log.info)
        result = job.train(
            training_frame(split),
            feature_names,
            config,
            tags={
                "dagster/run_id": context.run.run_id,
                "dagster/asset": context.asset_key.to_user_string(),
            },
        )
        return TrainingOutcome(
            result.trained,
            "sagemaker",
            {
                "sagemaker_training_job": result.job_name,
                "sagemaker_training_job_arn": result.job_arn,
                "sagemaker_model_artifacts": result.model_artifacts,
            },
        )
