"""Train the busyness model as a SageMaker training job of the project's image, with boto3.

Why: a large training set needs more memory and cores than a Dagster step has. The job runs
the same image as ``docker run IMAGE train`` (:mod:`geo_busyness.training_container`), which
calls the same training function as the in-process backend, so the model is the one an
in-process run would have trained on the same rows and seed.

One job: the training set is uploaded as ``s3://<bucket>/<prefix>/<job>/input/training.parquet``
(the ``training`` channel is that folder); the output path is ``s3://<bucket>/<prefix>``, to
which SageMaker appends ``<job>/output/model.tar.gz``, so all of a job sits under one folder.
``describe_training_job`` is polled until the job is Completed, Failed or Stopped; a Completed
job's ``ModelArtifacts.S3ModelArtifacts`` is downloaded, unpacked (no path leaves the scratch
folder) and read. Failed or Stopped raise :class:`TrainingJobFailed` with SageMaker's
FailureReason (for a container error: its ``failure`` file). Waiting longer than
``wait_timeout_seconds`` raises TimeoutError naming the job, which SageMaker stops at
``max_runtime_s`` at the latest. Inputs and artifacts stay in S3 as the job's record.

Credentials come only from the AWS default chain; nothing here logs request parameters.
"""

from __future__ import annotations

import logging
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from geo_busyness.core.lifecycle import SPLIT_COLUMN, SPLITS
from geo_busyness.core.model import Split, TrainedModel, TrainingConfig
from geo_busyness.deploy.common import AwsClients, compact_stamp
from geo_busyness.training_container import read_model, to_hyperparameters

JOB_PREFIX = "busyness-model"
CHANNEL = "training"
INPUT_FILE = "training.parquet"
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
HYPERPARAMETER_VALUE_MAX = 2500  # SageMaker's limit per value
LOG = logging.getLogger(__name__)


class TrainingJobFailed(RuntimeError):
    """A training job did not leave a usable model; ``job_name`` finds it in SageMaker."""

    def __init__(self, reason: str, *, job_name: str) -> None:
        super().__init__(reason)
        self.job_name = job_name


@dataclass(frozen=True)
class SageMakerTrainingConfig:
    """Where a training job's data lives, what it runs on, and how long to wait for it.

    ``endpoint_url`` points the SageMaker client elsewhere (tests), ``s3_endpoint_url`` the
    S3 client. The container trains on one machine, so ``instance_count`` must be 1: more
    instances would each train the same model and be billed for it.
    """

    role_arn: str
    image_uri: str
    bucket: str
    prefix: str = "sagemaker/training"
    instance_type: str = "ml.m5.4xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 4 * 3600
    region: str | None = None
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    poll_delay_seconds: float = 30.0
    wait_timeout_seconds: float = 5 * 3600.0

    def __post_init__(self) -> None:
        for name in ("role_arn", "image_uri", "bucket"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required for SageMaker training")
        if self.instance_count != 1:
            raise ValueError(
                f"instance_count must be 1 (the training container runs on one instance), "
                f"got {self.instance_count}"
            )
        for name in ("volume_size_gb", "max_runtime_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def key(self, *parts: str) -> str:
        """``<prefix>/<parts>``: an object key in ``bucket``."""
        return "/".join(part for part in (self.prefix.strip("/"), *parts) if part)

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}".rstrip("/")


@dataclass(frozen=True)
class TrainingJobResult:
    trained: TrainedModel
    job_name: str
    job_arn: str
    model_artifacts: str


def training_frame(split: Split) -> pd.DataFrame:
    """The split as one frame labelled like the ``training_set`` asset (what the job reads)."""
    frame = pd.concat(
        [getattr(split, name).assign(**{SPLIT_COLUMN: name}) for name in SPLITS],
        ignore_index=True,
    )
    frame[SPLIT_COLUMN] = pd.Categorical(frame[SPLIT_COLUMN], categories=SPLITS)
    return frame


def _split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


class SageMakerTraining:
    """Runs :func:`train_busyness_model` as a SageMaker training job. Clients may be injected."""

    def __init__(
        self,
        config: SageMakerTrainingConfig,
        *,
        sagemaker_client: Any = None,
        s3_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = LOG.info,
    ) -> None:
        self.config = config
        self._clients = AwsClients(
            config.region,
            {"sagemaker": config.endpoint_url, "s3": config.s3_endpoint_url},
            {"sagemaker": sagemaker_client, "s3": s3_client},
        )
        self._sleep = sleep
        self._log = log

    @property
    def sagemaker(self) -> Any:
        return self._clients["sagemaker"]

    @property
    def s3(self) -> Any:
        return self._clients["s3"]

    # ------------------------------------------------------------------ public API
    def train(
        self,
        training_set: pd.DataFrame,
        feature_names: list[str],
        config: TrainingConfig,
        tags: Mapping[str, str] | None = None,
    ) -> TrainingJobResult:
        """Upload ``training_set`` (labelled by a ``split`` column), train it in a job, return
        the model. Raises TrainingJobFailed, or TimeoutError while the job still runs."""
        from botocore.exceptions import BotoCoreError, ClientError

        hyperparameters = to_hyperparameters(feature_names, config)
        too_long = [k for k, v in hyperparameters.items() if len(v) > HYPERPARAMETER_VALUE_MAX]
        if too_long:
            raise ValueError(
                f"hyperparameters {too_long} exceed SageMaker's {HYPERPARAMETER_VALUE_MAX} "
                "characters per value"
            )
        # Unique per start; letters, digits and dashes, 37 of SageMaker's 63 characters.
        name = f"{JOB_PREFIX}-{compact_stamp()}-{secrets.token_hex(3)}"
        try:
            self._upload(training_set, name)
            arn = self._create(name, hyperparameters, tags or {})
            self._log(f"SageMaker training job {name} started ({arn})")
            artifacts = self._wait(name).get("ModelArtifacts", {}).get("S3ModelArtifacts")
            if not artifacts:
                raise TrainingJobFailed(
                    f"SageMaker training job {name} Completed without ModelArtifacts",
                    job_name=name,
                )
            trained = self._fetch(name, artifacts)
        except (ClientError, BotoCoreError) as error:
            raise TrainingJobFailed(
                f"SageMaker training job {name} failed: {error}", job_name=name
            ) from error
        if trained.feature_names != list(feature_names):
            raise TrainingJobFailed(
                f"training job {name} returned a model of features {trained.feature_names}, "
                f"not the requested {list(feature_names)}",
                job_name=name,
            )
        return TrainingJobResult(trained, name, arn, artifacts)

    # ------------------------------------------------------------------ steps
    def _upload(self, training_set: pd.DataFrame, name: str) -> None:
        with tempfile.TemporaryDirectory(prefix="geo-busyness-training-") as scratch:
            path = Path(scratch) / INPUT_FILE
            training_set.to_parquet(path, index=False)
            self.s3.upload_file(
                str(path), self.config.bucket, self.config.key(name, "input", INPUT_FILE)
            )

    def _create(self, name: str, hyperparameters: dict[str, str], tags: Mapping[str, str]) -> str:
        config = self.config
        answer = self.sagemaker.create_training_job(
            TrainingJobName=name,
            AlgorithmSpecification={
                "TrainingImage": config.image_uri,
                "TrainingInputMode": "File",
            },
            RoleArn=config.role_arn,
            InputDataConfig=[
                {
                    "ChannelName": CHANNEL,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            # The trailing slash keeps another job's "<name>-x/" folder out.
                            "S3Uri": config.uri(name, "input") + "/",
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "InputMode": "File",
                }
            ],
            OutputDataConfig={"S3OutputPath": config.uri()},
            ResourceConfig={
                "InstanceType": config.instance_type,
                "InstanceCount": config.instance_count,
                "VolumeSizeInGB": config.volume_size_gb,
            },
            StoppingCondition={"MaxRuntimeInSeconds": config.max_runtime_s},
            HyperParameters=hyperparameters,
            Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
        )
        return answer["TrainingJobArn"]

    def _wait(self, name: str) -> dict:
        """Poll until the job ends; the description of a Completed job, else raise."""
        deadline = time.monotonic() + self.config.wait_timeout_seconds
        seen = None
        while True:
            described = self.sagemaker.describe_training_job(TrainingJobName=name)
            status = described["TrainingJobStatus"]
            state = (status, described.get("SecondaryStatus"))
            if state != seen:
                self._log(f"SageMaker training job {name}: {status} ({state[1] or '-'})")
                seen = state
            if status == "Completed":
                return described
            if status in TERMINAL:
                raise TrainingJobFailed(
                    f"SageMaker training job {name} {status}: "
                    f"{described.get('FailureReason') or 'no FailureReason given'}",
                    job_name=name,
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"SageMaker training job {name} still {status} after "
                    f"{self.config.wait_timeout_seconds:.0f}s; it runs on (stopped by SageMaker "
                    f"after {self.config.max_runtime_s}s at the latest)"
                )
            self._sleep(self.config.poll_delay_seconds)

    def _fetch(self, name: str, artifacts: str) -> TrainedModel:
        """Download and unpack ``model.tar.gz``; its members may not leave the scratch folder."""
        from botocore.exceptions import ClientError

        bucket, key = _split_s3_uri(artifacts)
        with tempfile.TemporaryDirectory(prefix="geo-busyness-model-") as scratch:
            archive = Path(scratch) / "model.tar.gz"
            model_dir = Path(scratch) / "model"
            try:
                self.s3.download_file(bucket, key, str(archive))
            except ClientError as error:
                raise TrainingJobFailed(
                    f"SageMaker training job {name} Completed but its model artifact "
                    f"{artifacts} cannot be downloaded: {error}",
                    job_name=name,
                ) from error
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(model_dir, filter="data")
                return read_model(model_dir)
            except (tarfile.TarError, OSError, ValueError, KeyError) as error:
                raise TrainingJobFailed(
                    f"training job {name} left an unusable model artifact {artifacts}: {error}",
                    job_name=name,
                ) from error
