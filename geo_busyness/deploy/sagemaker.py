"""Deploy a model bundle to a SageMaker real-time endpoint with plain boto3.

Why boto3 and not the ``sagemaker`` SDK: its resource classes reject moto's responses, and
the five calls needed here are simpler to read (and to stub) than the SDK's abstractions.

A deployment uploads the bundle as ``model.tar.gz`` (files at the root: SageMaker unpacks it
into ``/opt/ml/model``), creates a Model and an EndpointConfig with names unique to this
deployment (version + UTC time + random suffix: redeploying a version, e.g. to roll back by
hand, never collides), with data capture of requests and responses, and then creates the
endpoint or updates it to the new config. SageMaker's update is blue/green: the old fleet
serves until the new one is healthy. After ``InService`` one smoke request is sent through
``sagemaker-runtime``.

Rollback: if the update ends ``Failed``, times out, or the smoke answer is wrong, the endpoint
is updated back to the EndpointConfig it had before (and waited for); if SageMaker already
rolled the update back itself the endpoint is left as it is. A newly created endpoint that
fails has nothing to go back to and is deleted. Either way :class:`DeploymentFailed` is raised.
Models and endpoint configs of earlier deployments are kept: they are what rollbacks use.

A multi-city bundle deploys the same way (``package_bundle`` keeps its ``cities/<city>/``
folders); its Model's environment carries the combined version label and, in
``GEO_BUSYNESS_MODEL_MEMBERS``, each city's model name and version as JSON, which is what
``status()`` reports and the next deployment's ``previous_model_version`` reads.

Credentials come only from the AWS default chain; nothing here logs request parameters.
"""

from __future__ import annotations

import gzip
import json
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from geo_busyness.deploy.common import (
    AwsClients,
    BundleManifest,
    DeploymentFailed,
    DeploymentRecord,
    SmokeTest,
    compact_stamp,
    slug,
    utc_now,
)
from geo_busyness.resources.settings import MODEL_MEMBERS_ENV, MODEL_NAME_ENV, MODEL_VERSION_ENV

NAME_MAX = 63  # SageMaker: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
SETTLED = frozenset({"InService", "Failed", "OutOfService", "UpdateRollbackFailed"})


@dataclass(frozen=True)
class SageMakerConfig:
    """Where the endpoint, model data and captured traffic live, and how long to wait.

    ``capture_bucket`` defaults to ``model_bucket``. ``endpoint_url`` points the SageMaker and
    SageMaker-runtime clients elsewhere (tests), ``s3_endpoint_url`` the S3 client.
    """

    endpoint_name: str
    role_arn: str
    image_uri: str
    model_bucket: str
    model_prefix: str = "sagemaker/models"
    capture_bucket: str | None = None
    capture_prefix: str = "sagemaker/data-capture"
    capture_sampling_percentage: int = 100
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = 1
    variant_name: str = "AllTraffic"
    container_environment: Mapping[str, str] = field(default_factory=dict)
    region: str | None = None
    endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    poll_delay_seconds: float = 15.0
    wait_timeout_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if slug(self.endpoint_name, NAME_MAX) != self.endpoint_name:
            raise ValueError(
                f"endpoint_name {self.endpoint_name!r} must be letters, digits and single "
                f"dashes, at most {NAME_MAX} characters"
            )
        if not 0 <= self.capture_sampling_percentage <= 100:
            raise ValueError("capture_sampling_percentage must be between 0 and 100")

    @property
    def capture_uri(self) -> str:
        return f"s3://{self.capture_bucket or self.model_bucket}/{self.capture_prefix.strip('/')}"


@dataclass(frozen=True)
class EndpointSnapshot:
    """``describe_endpoint``'s answer; ``status()`` also fills in which model(s) serve."""

    status: str
    config_name: str | None
    failure_reason: str | None
    model_name: str | None = None
    model_version: str | None = None
    members: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def resource_name(endpoint_name: str, model_version: str, stamp: str, nonce: str) -> str:
    """``<endpoint>-v<version>-<stamp>-<nonce>``, the endpoint part shortened to fit 63."""
    suffix = f"v{slug(model_version, 20)}-{stamp}-{nonce}"
    return f"{slug(endpoint_name, NAME_MAX - len(suffix) - 1)}-{suffix}"


def package_bundle(bundle_dir: Path, destination: Path) -> None:
    """Write ``model.tar.gz`` with the bundle's files at the root, byte-identical per content."""
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file())
    with (
        open(destination, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(bundle_dir).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with open(path, "rb") as content:
                tar.addfile(info, content)


class SageMakerEndpoint:
    """The SageMaker deployment target. Clients may be injected (tests stub them)."""

    target_name = "sagemaker"

    def __init__(
        self,
        config: SageMakerConfig,
        *,
        sagemaker_client: Any = None,
        runtime_client: Any = None,
        s3_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._clients = AwsClients(
            config.region,
            {
                "sagemaker": config.endpoint_url,
                "sagemaker-runtime": config.endpoint_url,
                "s3": config.s3_endpoint_url,
            },
            {"sagemaker": sagemaker_client, "sagemaker-runtime": runtime_client, "s3": s3_client},
        )
        self._sleep = sleep

    @property
    def sagemaker(self) -> Any:
        return self._clients["sagemaker"]

    @property
    def runtime(self) -> Any:
        return self._clients["sagemaker-runtime"]

    @property
    def s3(self) -> Any:
        return self._clients["s3"]

    # ------------------------------------------------------------------ public API
    def status(self) -> EndpointSnapshot | None:
        """The endpoint's status, config and model(s) now, or None if it does not exist."""
        snapshot = self._describe()
        if snapshot is None:
            return None
        environment = self._environment_of(snapshot.config_name) or {}
        try:
            members = json.loads(environment.get(MODEL_MEMBERS_ENV) or "{}")
        except ValueError:
            members = {}
        return EndpointSnapshot(
            status=snapshot.status,
            config_name=snapshot.config_name,
            failure_reason=snapshot.failure_reason,
            model_name=environment.get(MODEL_NAME_ENV),
            model_version=environment.get(MODEL_VERSION_ENV),
            members=members if isinstance(members, dict) else {},
        )

    def deploy(self, bundle_dir: str | Path, smoke: SmokeTest) -> DeploymentRecord:
        """Put ``bundle_dir`` on the endpoint; on failure the previous config serves again."""
        from botocore.exceptions import BotoCoreError, ClientError

        manifest = BundleManifest.read(bundle_dir)
        smoke = smoke.for_bundle(manifest)
        name = resource_name(
            self.config.endpoint_name, manifest.model_version, compact_stamp(), secrets.token_hex(2)
        )
        try:
            before = self._describe()
            if before is not None and before.status not in ("InService", "Failed"):
                raise DeploymentFailed(
                    f"endpoint {self.config.endpoint_name} is {before.status}; another "
                    "deployment or a SageMaker update is running, try again when it settles",
                    rolled_back=True,
                )
            model_data_url = self._upload(manifest, name)
            self._create_model(manifest, name, model_data_url)
            self._create_endpoint_config(name)
            if before is not None and before.status == "Failed":
                self._delete_failed_endpoint()  # serves nothing; cannot be updated
                before = None
            previous_version = self._model_version_of(before.config_name) if before else None
            if before is None:
                self.sagemaker.create_endpoint(
                    EndpointName=self.config.endpoint_name, EndpointConfigName=name
                )
            else:
                self.sagemaker.update_endpoint(
                    EndpointName=self.config.endpoint_name, EndpointConfigName=name
                )
        except (ClientError, BotoCoreError, TimeoutError) as error:
            raise DeploymentFailed(
                f"SageMaker deployment of model {manifest.model_version} to "
                f"{self.config.endpoint_name} failed before the endpoint changed: {error}",
                rolled_back=True,
            ) from error
        self._check_new_config(name, before, smoke)  # on failure: rolls back, raises
        return DeploymentRecord(
            target=self.target_name,
            address=self.config.endpoint_name,
            model_name=manifest.model_name,
            model_version=manifest.model_version,
            bundle_dir=str(manifest.bundle_dir),
            deployed_at=utc_now(),
            previous_model_version=previous_version,
            details={
                "endpoint_config_name": name,
                "sagemaker_model_name": name,
                "model_data_url": model_data_url,
                "previous_endpoint_config_name": before.config_name if before else None,
                "data_capture_uri": self.config.capture_uri,
            },
            members=dict(manifest.members),
        )

    # ------------------------------------------------------------------ steps
    def _describe(self) -> EndpointSnapshot | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.sagemaker.describe_endpoint(EndpointName=self.config.endpoint_name)
        except ClientError as error:
            if "Could not find endpoint" in str(error):
                return None
            raise
        return EndpointSnapshot(
            status=answer["EndpointStatus"],
            config_name=answer.get("EndpointConfigName"),
            failure_reason=answer.get("FailureReason"),
        )

    def _upload(self, manifest: BundleManifest, name: str) -> str:
        key = (
            f"{self.config.model_prefix.strip('/')}/{self.config.endpoint_name}/{name}/model.tar.gz"
        )
        with tempfile.TemporaryDirectory(prefix="geo-busyness-model-") as scratch:
            archive = Path(scratch) / "model.tar.gz"
            package_bundle(manifest.bundle_dir, archive)
            self.s3.upload_file(str(archive), self.config.model_bucket, key)
        return f"s3://{self.config.model_bucket}/{key}"

    def _create_model(self, manifest: BundleManifest, name: str, model_data_url: str) -> None:
        self.sagemaker.create_model(
            ModelName=name,
            ExecutionRoleArn=self.config.role_arn,
            PrimaryContainer={
                "Image": self.config.image_uri,
                "ModelDataUrl": model_data_url,
                "Environment": {
                    **self.config.container_environment,
                    MODEL_NAME_ENV: manifest.model_name,
                    MODEL_VERSION_ENV: manifest.model_version,
                    **(
                        {MODEL_MEMBERS_ENV: json.dumps(manifest.members, sort_keys=True)}
                        if manifest.members
                        else {}
                    ),
                },
            },
        )

    def _create_endpoint_config(self, name: str) -> None:
        self.sagemaker.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": self.config.variant_name,
                    "ModelName": name,
                    "InstanceType": self.config.instance_type,
                    "InitialInstanceCount": self.config.initial_instance_count,
                }
            ],
            DataCaptureConfig={
                "EnableCapture": True,
                "InitialSamplingPercentage": self.config.capture_sampling_percentage,
                "DestinationS3Uri": self.config.capture_uri,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
            },
        )

    def _model_version_of(self, config_name: str | None) -> str | None:
        """The version a config serves, from its model's environment (None if unknown)."""
        return (self._environment_of(config_name) or {}).get(MODEL_VERSION_ENV)

    def _environment_of(self, config_name: str | None) -> dict[str, str] | None:
        """The container environment of a config's model (None if unknown)."""
        from botocore.exceptions import ClientError

        if not config_name:
            return None
        try:
            config = self.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
            model_name = config["ProductionVariants"][0]["ModelName"]
            model = self.sagemaker.describe_model(ModelName=model_name)
        except (ClientError, KeyError, IndexError):
            return None
        return model.get("PrimaryContainer", {}).get("Environment", {})

    def _delete_failed_endpoint(self) -> None:
        self.sagemaker.delete_endpoint(EndpointName=self.config.endpoint_name)
        self._wait(lambda snapshot: snapshot is None, "deleted")

    def _wait(
        self, done: Callable[[EndpointSnapshot | None], bool], what: str
    ) -> EndpointSnapshot | None:
        """Poll ``describe_endpoint`` until ``done``; raise TimeoutError after the configured wait."""
        deadline = time.monotonic() + self.config.wait_timeout_seconds
        while True:
            snapshot = self._describe()
            if done(snapshot):
                return snapshot
            if time.monotonic() >= deadline:
                state = snapshot.status if snapshot else "absent"
                raise TimeoutError(
                    f"endpoint {self.config.endpoint_name} not {what} after "
                    f"{self.config.wait_timeout_seconds:.0f}s (status {state})"
                )
            self._sleep(self.config.poll_delay_seconds)

    def _check_new_config(
        self, name: str, before: EndpointSnapshot | None, smoke: SmokeTest
    ) -> None:
        """Wait for the new config to serve and smoke-test it; roll back and raise otherwise."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            settled = self._wait(lambda s: s is not None and s.status in SETTLED, "settled")
        except (TimeoutError, ClientError, BotoCoreError) as error:
            self._roll_back(before, f"waiting for {name} failed: {error}")
        if settled is None:
            self._roll_back(before, "the endpoint disappeared while updating")
        if settled.status != "InService":
            self._roll_back(
                before, f"endpoint is {settled.status}: {settled.failure_reason or 'no reason'}"
            )
        if settled.config_name != name:
            raise DeploymentFailed(
                f"SageMaker rolled the update back itself (endpoint serves "
                f"{settled.config_name}, not {name}): {settled.failure_reason or 'no reason'}",
                rolled_back=True,
            )
        problems = self._smoke(smoke)
        if problems:
            self._roll_back(before, f"smoke test failed: {'; '.join(problems)}")

    def _smoke(self, smoke: SmokeTest) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.runtime.invoke_endpoint(
                EndpointName=self.config.endpoint_name,
                ContentType="application/json",
                Accept="application/json",
                Body=smoke.request_body(),
            )
        except (ClientError, BotoCoreError) as error:
            return [f"invoke_endpoint failed: {error}"]
        return smoke.problems(answer["Body"].read())

    def _roll_back(self, before: EndpointSnapshot | None, reason: str) -> NoReturn:
        """Put the endpoint back as it was (delete it if it is new), then raise DeploymentFailed."""
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = self.config.endpoint_name
        try:
            if before is None:
                self.sagemaker.delete_endpoint(EndpointName=endpoint)
                self._wait(lambda s: s is None, "deleted")
                outcome = "the new endpoint was deleted"
            else:
                self.sagemaker.update_endpoint(
                    EndpointName=endpoint, EndpointConfigName=before.config_name
                )
                back = self._wait(lambda s: s is not None and s.status in SETTLED, "rolled back")
                if back is None or back.status != "InService":
                    raise DeploymentFailed(
                        f"{reason}; rollback to {before.config_name} ended "
                        f"{back.status if back else 'absent'}",
                        rolled_back=False,
                    )
                outcome = f"rolled back to endpoint config {before.config_name}"
        except (ClientError, BotoCoreError, TimeoutError) as error:
            raise DeploymentFailed(
                f"{reason}; rollback of {endpoint} failed too: {error}", rolled_back=False
            ) from None
        raise DeploymentFailed(f"{reason}; {outcome}", rolled_back=True)
