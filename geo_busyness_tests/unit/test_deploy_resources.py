"""The Dagster resources only configure and delegate to :mod:`geo_busyness.deploy`."""

from __future__ import annotations

import pytest

from geo_busyness.deploy import DEFAULT_SERVER_COMMAND, DeploymentRecord, SmokeTest
from geo_busyness.resources.deployment import (
    EndpointTarget,
    LocalEndpointTarget,
    SageMakerEndpointTarget,
)
from geo_busyness.resources.settings import DATA_DIR_ENV

pytestmark = pytest.mark.unit

SAGEMAKER = {
    "endpoint_name": "hex-busyness",
    "role_arn": "arn:aws:iam::123456789012:role/sm",
    "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/geo-busyness:1",
    "model_bucket": "models",
}


def test_local_defaults_put_state_in_the_data_dir_and_run_the_serving_module(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    config = LocalEndpointTarget().to_config()
    assert config.state_dir == tmp_path / "endpoint"
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert tuple(config.server_command) == DEFAULT_SERVER_COMMAND
    assert "geo_busyness.serving" in DEFAULT_SERVER_COMMAND


def test_sagemaker_config_carries_every_field_and_capture_defaults_to_the_model_bucket():
    config = SageMakerEndpointTarget(
        **SAGEMAKER, region="eu-west-1", poll_delay_seconds=1
    ).to_config()
    assert (config.endpoint_name, config.region, config.poll_delay_seconds) == (
        "hex-busyness",
        "eu-west-1",
        1,
    )
    assert config.capture_uri == "s3://models/sagemaker/data-capture"
    assert config.capture_sampling_percentage == 100


@pytest.mark.parametrize(
    "resource",
    [LocalEndpointTarget(port=1), SageMakerEndpointTarget(**SAGEMAKER)],
    ids=["local", "sagemaker"],
)
def test_deploy_builds_the_smoke_test_and_delegates(resource, monkeypatch, tmp_path):
    assert isinstance(resource, EndpointTarget)
    calls = []

    class Recording:
        def deploy(self, bundle_dir, smoke):
            calls.append((bundle_dir, smoke))
            return DeploymentRecord("fake", "addr", "m", "1", str(bundle_dir), "now")

    monkeypatch.setattr(type(resource), "target", lambda self: Recording())
    instances = [{"h3_cell": "c", "timestamp": "2025-01-01T00:00:00Z"}]
    expected = [{"h3_cell": "c", "hour_start": "2025-01-01T00:00:00Z", "busyness": 1.0}]
    record = resource.deploy(tmp_path, instances, expected)

    assert record.target == "fake"
    assert calls == [(tmp_path, SmokeTest(instances=instances, expected_predictions=expected))]


class IncompleteTarget(EndpointTarget):
    name: str = "forgot target()"


def test_a_target_without_target_method_cannot_be_built():
    with pytest.raises(TypeError, match=r"IncompleteTarget.*target"):
        IncompleteTarget()
