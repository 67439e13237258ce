"""Where a model bundle is deployed, as Dagster resources over :mod:`geo_busyness.deploy`.

An asset takes ``endpoint: EndpointTarget`` and calls ``endpoint.deploy(bundle_dir,
smoke_instances, expected)``; which target it is (a local server behind a fixed port, or a
SageMaker endpoint) is resource configuration. A failed deployment raises
:class:`~geo_busyness.deploy.DeploymentFailed` after the previous model was put back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from geo_busyness.deploy import (
    DEFAULT_SERVER_COMMAND,
    DeploymentRecord,
    DeploymentTarget,
    LocalEndpoint,
    LocalEndpointConfig,
    LocalEndpointStatus,
    SageMakerConfig,
    SageMakerEndpoint,
    SmokeTest,
)
from geo_busyness.deploy.sagemaker import EndpointSnapshot
from geo_busyness.resources.settings import default_data_dir


class EndpointTarget(dg.ConfigurableResource, ABC):
    """Common base: what an asset needs from any deployment target."""

    @abstractmethod
    def target(self) -> DeploymentTarget:
        """The deployment logic this resource configures."""

    def bundles_dir(self) -> Path:
        """Where the deployment bundles this target serves are written."""
        return default_data_dir() / "bundles"

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """What serves now, as JSON: ``serving``, ``model_version``, ``problems`` and what the
        target adds; the endpoint health sensor records it when it changes."""

    def deploy(
        self,
        bundle_dir: str | Path,
        smoke_instances: Sequence[Mapping[str, Any]],
        expected: Sequence[Mapping[str, Any]] | None = None,
    ) -> DeploymentRecord:
        """Deploy, after one request of ``smoke_instances`` answers with the bundle's version
        and, if given, the ``expected`` predictions (``h3_cell``, ``hour_start``, ``busyness``)."""
        smoke = SmokeTest(instances=list(smoke_instances), expected_predictions=expected)
        return self.target().deploy(bundle_dir, smoke)


class LocalEndpointTarget(EndpointTarget):
    """A local model server behind a fixed address; a new model replaces it without failed
    requests. The server processes outlive the Dagster run; ``stop()`` ends them."""

    host: str = Field(default="127.0.0.1", description="Address clients connect to.")
    port: int = Field(default=8080, description="Port clients connect to.")
    state_dir: str | None = Field(
        default=None,
        description="Where the endpoint's state and logs live; default: <data dir>/endpoint.",
    )
    server_command: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SERVER_COMMAND),
        description="Model server argv; placeholders {python} {model_dir} {host} {port}.",
    )
    startup_timeout_seconds: float = Field(
        default=120.0, description="How long a new server may take to answer GET /ping."
    )
    drain_timeout_seconds: float = Field(
        default=30.0, description="How long running requests on the old server may take."
    )

    def to_config(self) -> LocalEndpointConfig:
        state_dir = Path(self.state_dir) if self.state_dir else default_data_dir() / "endpoint"
        return LocalEndpointConfig(
            state_dir=state_dir,
            host=self.host,
            port=self.port,
            server_command=tuple(self.server_command),
            startup_timeout_seconds=self.startup_timeout_seconds,
            drain_timeout_seconds=self.drain_timeout_seconds,
        )

    def target(self) -> LocalEndpoint:
        return LocalEndpoint(self.to_config())

    def bundles_dir(self) -> Path:
        """Next to the endpoint's state: the servers read their bundle for as long as they run."""
        return self.to_config().state_dir / "bundles"

    def status(self) -> LocalEndpointStatus:
        return self.target().status()

    def health(self) -> dict[str, Any]:
        status = self.status()
        return {
            "serving": status.serving,
            "address": status.url,
            "model_version": status.model_version,
            "problems": list(status.problems),
            "supervised": status.supervisor_pid is not None,
            "restarts_since_deploy": len(status.restarts),
            "last_restart": status.restarts[-1] if status.restarts else None,
        }

    def stop(self) -> bool:
        return self.target().stop()


class SageMakerEndpointTarget(EndpointTarget):
    """A SageMaker real-time endpoint with data capture; credentials from the AWS default chain."""

    endpoint_name: str = Field(description="SageMaker endpoint name.")
    role_arn: str = Field(description="Execution role SageMaker assumes to pull image and model.")
    image_uri: str = Field(description="ECR image that runs `serve` (the model server).")
    model_bucket: str = Field(description="S3 bucket for model.tar.gz uploads.")
    model_prefix: str = "sagemaker/models"
    capture_bucket: str | None = Field(
        default=None, description="S3 bucket for captured traffic; default: model_bucket."
    )
    capture_prefix: str = "sagemaker/data-capture"
    capture_sampling_percentage: int = Field(default=100, ge=0, le=100)
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = Field(default=1, ge=1)
    region: str | None = Field(default=None, description="Default: the AWS default chain's.")
    endpoint_url: str | None = Field(
        default=None, description="SageMaker API override (tests, VPC endpoints)."
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 API override.")
    poll_delay_seconds: float = 15.0
    wait_timeout_seconds: float = 3600.0

    def to_config(self) -> SageMakerConfig:
        return SageMakerConfig(
            endpoint_name=self.endpoint_name,
            role_arn=self.role_arn,
            image_uri=self.image_uri,
            model_bucket=self.model_bucket,
            model_prefix=self.model_prefix,
            capture_bucket=self.capture_bucket,
            capture_prefix=self.capture_prefix,
            capture_sampling_percentage=self.capture_sampling_percentage,
            instance_type=self.instance_type,
            initial_instance_count=self.initial_instance_count,
            region=self.region,
            endpoint_url=self.endpoint_url,
            s3_endpoint_url=self.s3_endpoint_url,
            poll_delay_seconds=self.poll_delay_seconds,
            wait_timeout_seconds=self.wait_timeout_seconds,
        )

    def target(self) -> SageMakerEndpoint:
        return SageMakerEndpoint(self.to_config())

    def status(self) -> EndpointSnapshot | None:
        return self.target().status()

    def health(self) -> dict[str, Any]:
        snapshot = self.status()
        if snapshot is None:
            return {"serving": False, "model_version": None, "problems": ["no such endpoint"]}
        return {
            "serving": snapshot.status == "InService",
            "status": snapshot.status,
            "model_version": snapshot.model_version,
            "problems": [snapshot.failure_reason] if snapshot.failure_reason else [],
        }
