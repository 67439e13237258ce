"""Deployment of model bundles to serving targets, free of Dagster so any process can use it.

* :class:`LocalEndpoint` — a local server process behind a fixed address, replaced without
  failed requests (:mod:`geo_busyness.deploy.local`).
* :class:`SageMakerEndpoint` — a SageMaker real-time endpoint with data capture
  (:mod:`geo_busyness.deploy.sagemaker`).

Both implement :class:`DeploymentTarget`: ``deploy(bundle_dir, smoke) -> DeploymentRecord``,
raising :class:`DeploymentFailed` after putting the previous model back.
"""

from geo_busyness.deploy.common import (
    BundleManifest,
    DeploymentFailed,
    DeploymentRecord,
    DeploymentTarget,
    SmokeTest,
)
from geo_busyness.deploy.local import (
    DEFAULT_SERVER_COMMAND,
    LocalEndpoint,
    LocalEndpointConfig,
    LocalEndpointStatus,
)
from geo_busyness.deploy.sagemaker import EndpointSnapshot, SageMakerConfig, SageMakerEndpoint

__all__ = [
    "DEFAULT_SERVER_COMMAND",
    "BundleManifest",
    "DeploymentFailed",
    "DeploymentRecord",
    "DeploymentTarget",
    "EndpointSnapshot",
    "LocalEndpoint",
    "LocalEndpointConfig",
    "LocalEndpointStatus",
    "SageMakerConfig",
    "SageMakerEndpoint",
    "SmokeTest",
]
