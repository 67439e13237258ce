"""The SageMaker training backend against moto's SageMaker and S3 API on loopback, with the
real ``train`` entry point doing the training.

moto 5.2 records ``create_training_job`` and answers ``describe_training_job`` with status
Completed at once and ``ModelArtifacts`` at ``<S3OutputPath>/<job>/output/model.tar.gz`` (as
SageMaker names it), but it runs nothing. :class:`SageMakerStandIn` plays SageMaker's part on
the moto server itself: a created job turns InProgress, and a thread downloads the job's
``training`` channel from (moto) S3, writes its ``hyperparameters.json``, runs the real
``train`` console script with the ``/opt/ml`` layout under a temporary folder, and then either
uploads ``model.tar.gz`` to the job's ``ModelArtifacts`` and marks it Completed, or marks it
Failed with the container's ``failure`` file as FailureReason. The backend under test is the
production code path: it polls until the job ends and only then reads the artifact. A Stopped
job takes the same path as a Failed one and is not simulated.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from geo_busyness.core.city import DEFAULT_CITY
from geo_busyness.core.features import feature_columns
from geo_busyness.core.lifecycle import split_from_training_set, training_set_from_features
from geo_busyness.core.model import SplitConfig, TrainingConfig, predict, train_busyness_model
from geo_busyness.definitions import defs
from geo_busyness.deploy.sagemaker import package_bundle
from geo_busyness.deploy.sagemaker_training import (
    SageMakerTraining,
    SageMakerTrainingConfig,
    TrainingJobFailed,
)
from geo_busyness.resources.environment import local_resources
from geo_busyness.resources.training_backend import SageMakerTrainingBackend
from geo_busyness.simulate import SimulationConfig, simulated_city
from geo_busyness.stack.services import free_port
from geo_busyness.training_container import FAILURE_FILE, to_hyperparameters

pytestmark = pytest.mark.integration

TRAIN = Path(sys.executable).parent / "train"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/geo-busyness-sagemaker"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/geo-busyness:test"
FEATURES = feature_columns(DEFAULT_CITY.n_restaurant_clusters)
# A budget that never binds, so the job's model must equal the in-process one. n_jobs stays
# the default (this machine's CPUs) on both sides: the container uses all CPUs it is given.
CONFIG = TrainingConfig(n_trials=3, time_budget_s=600, seed=5)
JOB_NAME = re.compile(r"^busyness-model-\d{8}T\d{6}-[0-9a-f]{6}$")


class SageMakerStandIn:
    """Runs the jobs moto records the way SageMaker runs a training image (see module doc)."""

    def __init__(self, moto_url: str, workdir: Path) -> None:
        self.moto_url = moto_url
        self.workdir = workdir
        # "train" runs the container; "hang" leaves the job InProgress; "escape" completes it
        # with a model.tar.gz whose member climbs out of the extraction folder.
        self.behaviour = "train"
        self.escaping_member = f"../../escaped-{uuid.uuid4().hex}.txt"
        self.threads: list[threading.Thread] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from moto.sagemaker.models import SageMakerModelBackend

        original = SageMakerModelBackend.create_training_job
        stand_in = self

        def create_training_job(backend, *args, **kwargs):
            job = original(backend, *args, **kwargs)
            job.training_job_status, job.secondary_status = "InProgress", "Starting"
            if stand_in.behaviour != "hang":
                thread = threading.Thread(target=stand_in.run, args=(job,), daemon=True)
                stand_in.threads.append(thread)
                thread.start()
            return job

        monkeypatch.setattr(SageMakerModelBackend, "create_training_job", create_training_job)

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def run(self, job: Any) -> None:
        try:
            if self.behaviour == "escape":
                self._escape(job)
            else:
                self._train(job)
        except Exception as error:  # a broken stand-in must fail the job, not hang the test
            job.failure_reason = f"stand-in error: {type(error).__name__}: {error}"
            job.training_job_status = job.secondary_status = "Failed"

    def _escape(self, job: Any) -> None:
        content = b"written outside the model folder"
        member = tarfile.TarInfo(self.escaping_member)
        member.size = len(content)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            tar.addfile(member, io.BytesIO(content))
        bucket, key = job.model_artifacts["S3ModelArtifacts"][5:].split("/", 1)
        self.s3().put_object(Bucket=bucket, Key=key, Body=archive.getvalue())
        job.training_job_status = job.secondary_status = "Completed"

    def _train(self, job: Any) -> None:
        s3 = self.s3()
        opt_ml = self.workdir / job.training_job_name
        channel = opt_ml / "input" / "data" / "training"
        config_dir = opt_ml / "input" / "config"
        model_dir, output_dir = opt_ml / "model", opt_ml / "output"
        for folder in (channel, config_dir, model_dir, output_dir):
            folder.mkdir(parents=True)
        (source,) = job.input_data_config
        bucket, prefix = source["DataSource"]["S3DataSource"]["S3Uri"][5:].split("/", 1)
        job.secondary_status = "Downloading"
        for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            target = channel / item["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
        (config_dir / "hyperparameters.json").write_text(json.dumps(job.hyper_parameters))
        job.secondary_status = "Training"
        process = subprocess.run(
            [str(TRAIN)],
            env={
                **os.environ,
                "SM_CHANNEL_TRAINING": str(channel),
                "SM_INPUT_CONFIG_DIR": str(config_dir),
                "SM_MODEL_DIR": str(model_dir),
                "SM_OUTPUT_DIR": str(output_dir),
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if process.returncode != 0:
            failure = output_dir / FAILURE_FILE
            reason = failure.read_text() if failure.exists() else process.stderr[-500:]
            job.failure_reason = f"AlgorithmError: {reason}"
            job.training_job_status = job.secondary_status = "Failed"
            return
        job.secondary_status = "Uploading"
        archive = opt_ml / "model.tar.gz"
        package_bundle(model_dir, archive)
        bucket, key = job.model_artifacts["S3ModelArtifacts"][5:].split("/", 1)
        s3.upload_file(str(archive), bucket, key)
        job.training_job_status = job.secondary_status = "Completed"


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path):
    """Fake credentials through the default chain, a fresh bucket, the SageMaker stand-in."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = f"training-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_server, region_name=REGION).create_bucket(Bucket=bucket)
    stand_in = SageMakerStandIn(moto_server, tmp_path / "opt-ml")
    stand_in.install(monkeypatch)
    yield {"url": moto_server, "bucket": bucket, "stand_in": stand_in}
    for thread in stand_in.threads:
        thread.join(timeout=300)


def client(aws: dict, service: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=aws["url"], region_name=REGION)


def sagemaker_config(aws: dict, **overrides: Any) -> SageMakerTrainingConfig:
    return SageMakerTrainingConfig(
        **{
            "role_arn": ROLE_ARN,
            "image_uri": IMAGE_URI,
            "bucket": aws["bucket"],
            "prefix": "jobs",
            "instance_type": "ml.m5.2xlarge",
            "volume_size_gb": 20,
            "max_runtime_s": 1800,
            "region": REGION,
            "endpoint_url": aws["url"],
            "s3_endpoint_url": aws["url"],
            "poll_delay_seconds": 0.1,
            "wait_timeout_seconds": 120,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """The ``training_set`` asset's frame (features, target, ``split``) of a small city."""
    simulated = simulated_city(SimulationConfig(days=14, pings_per_day=4_000, dirty_files=False))
    labelled, _ = training_set_from_features(
        {day: (lambda f=f: f) for day, f in simulated.features.items()}, 28, SplitConfig()
    )
    return labelled


def test_a_training_job_returns_the_model_in_process_training_would(aws, frame):
    result = SageMakerTraining(sagemaker_config(aws)).train(
        frame, FEATURES, CONFIG, tags={"dagster/run_id": "run-42"}
    )

    name = result.job_name
    assert JOB_NAME.match(name) and len(name) <= 63
    job = client(aws, "sagemaker").describe_training_job(TrainingJobName=name)
    bucket = aws["bucket"]
    assert job["TrainingJobStatus"] == "Completed"
    assert job["TrainingJobArn"] == result.job_arn
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE_URI
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert job["RoleArn"] == ROLE_ARN
    (channel,) = job["InputDataConfig"]
    assert channel["ChannelName"] == "training"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{bucket}/jobs/{name}/input/"
    assert channel["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/jobs"
    assert job["ResourceConfig"] == {
        "InstanceType": "ml.m5.2xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 20,
    }
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 1800
    assert job["HyperParameters"] == to_hyperparameters(FEATURES, CONFIG)
    assert all(isinstance(value, str) for value in job["HyperParameters"].values())
    tags = client(aws, "sagemaker").list_tags(ResourceArn=result.job_arn)["Tags"]
    assert {"Key": "dagster/run_id", "Value": "run-42"} in tags
    artifacts = f"s3://{bucket}/jobs/{name}/output/model.tar.gz"
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == result.model_artifacts == artifacts
    listed = client(aws, "s3").list_objects_v2(Bucket=bucket, Prefix=f"jobs/{name}/")
    assert sorted(item["Key"] for item in listed["Contents"]) == [
        f"jobs/{name}/input/training.parquet",
        f"jobs/{name}/output/model.tar.gz",
    ]

    split = split_from_training_set(frame)
    in_process = train_busyness_model(split, FEATURES, CONFIG)
    trained = result.trained
    assert trained.feature_names == FEATURES
    assert (trained.objective, trained.params, trained.best_iteration) == (
        in_process.objective,
        in_process.params,
        in_process.best_iteration,
    )
    assert trained.validation_mae == in_process.validation_mae
    assert np.array_equal(
        predict(trained, split.test, FEATURES), predict(in_process, split.test, FEATURES)
    )


def test_a_failed_job_raises_with_its_failure_reason(aws, frame):
    # A column the training set lacks: the container refuses it and SageMaker fails the job.
    features = [*FEATURES, "orders_lag_2h"]

    with pytest.raises(TrainingJobFailed) as raised:
        SageMakerTraining(sagemaker_config(aws)).train(frame, features, CONFIG)

    name = raised.value.job_name
    message = str(raised.value)
    assert message.startswith(f"SageMaker training job {name} Failed: AlgorithmError: ")
    assert "lacks columns ['orders_lag_2h']" in message
    job = client(aws, "sagemaker").describe_training_job(TrainingJobName=name)
    assert job["TrainingJobStatus"] == "Failed"


def test_a_job_that_does_not_end_in_time_raises_naming_it(aws, frame):
    aws["stand_in"].behaviour = "hang"
    training = SageMakerTraining(sagemaker_config(aws, wait_timeout_seconds=0.5))

    with pytest.raises(TimeoutError, match=r"SageMaker training job busyness-model-\S+ still "):
        training.train(frame.head(100), FEATURES, CONFIG)


def test_a_model_artifact_that_escapes_its_folder_is_refused(aws, frame):
    stand_in = aws["stand_in"]
    stand_in.behaviour = "escape"

    with pytest.raises(TrainingJobFailed, match="left an unusable model artifact"):
        SageMakerTraining(sagemaker_config(aws)).train(frame.head(100), FEATURES, CONFIG)
    escaped = Path(tempfile.gettempdir()) / Path(stand_in.escaping_member).name
    assert not escaped.exists()


def test_busyness_model_trains_on_sagemaker_when_the_resource_says_so(aws, frame, tmp_path):
    """The asset with the SageMaker backend: metadata and MLflow name the job, the job carries
    the Dagster run id. The PoC baseline is off (it runs in-process either way)."""
    import mlflow

    root = tmp_path / "platform"
    (root / "assets" / "regina").mkdir(parents=True)
    frame.to_parquet(root / "assets" / "regina" / "training_set.parquet", index=False)
    resources = {
        **local_resources(root, endpoint_port=free_port()),
        "training_backend": SageMakerTrainingBackend(
            role_arn=ROLE_ARN,
            image_uri=IMAGE_URI,
            bucket=aws["bucket"],
            region=REGION,
            endpoint_url=aws["url"],
            s3_endpoint_url=aws["url"],
            poll_delay_seconds=0.1,
            wait_timeout_seconds=120,
        ),
    }
    run_config = {
        "ops": {
            "regina__busyness_model": {
                "config": {"n_trials": 3, "time_budget_s": 600, "train_poc_baseline": False}
            }
        }
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            defs.assets,
            selection=[dg.AssetKey(["regina", "busyness_model"])],
            resources=resources,
            run_config=run_config,
            instance=instance,
        )

    assert result.success
    metadata = result.asset_materializations_for_node("regina__busyness_model")[0].metadata
    assert metadata["training_backend"].value == "sagemaker"
    name = metadata["sagemaker_training_job"].value
    assert JOB_NAME.match(name)
    arn = client(aws, "sagemaker").describe_training_job(TrainingJobName=name)["TrainingJobArn"]
    assert metadata["sagemaker_training_job_arn"].value == arn
    assert metadata["sagemaker_model_artifacts"].value.endswith(f"/{name}/output/model.tar.gz")
    tags = {
        t["Key"]: t["Value"] for t in client(aws, "sagemaker").list_tags(ResourceArn=arn)["Tags"]
    }
    assert tags == {"dagster/run_id": result.run_id, "dagster/asset": "regina/busyness_model"}
    tracking = resources["mlflow_tracking"].for_city("regina")
    run = mlflow.MlflowClient(tracking.uri).get_run(metadata["mlflow_run_id"].value)
    assert run.info.experiment_id == tracking.experiment_id()  # the city's own experiment
    params = run.data.params
    assert params["training_backend"] == "sagemaker"
    assert params["sagemaker_training_job"] == name
