"""Resources come from environment variables, with defaults that need no setup."""

import dagster as dg
import pytest

from geo_busyness.resources.deployment import LocalEndpointTarget, SageMakerEndpointTarget
from geo_busyness.resources.environment import (
    SAGEMAKER_ENV,
    build_resources,
    endpoint_target,
)
from geo_busyness.resources.tracking import MlflowTracking

pytestmark = pytest.mark.unit


@pytest.fixture
def clean_env(monkeypatch):
    for name in [
        "GEO_BUSYNESS_ENDPOINT_TARGET",
        "GEO_BUSYNESS_ENDPOINT_PORT",
        "MLFLOW_TRACKING_URI",
        *SAGEMAKER_ENV.values(),
    ]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_a_local_endpoint_and_a_local_mlflow_store(clean_env):
    resources = build_resources()
    assert isinstance(resources["endpoint"], LocalEndpointTarget)
    assert resources["endpoint"].port == 8080
    assert isinstance(resources["mlflow_tracking"], MlflowTracking)
    assert resources["mlflow_tracking"].uri.startswith("sqlite:///")


def test_mlflow_tracking_uri_comes_from_the_environment(clean_env):
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    tracking = build_resources()["mlflow_tracking"]
    assert tracking.tracking_uri == dg.EnvVar("MLFLOW_TRACKING_URI")


def test_endpoint_port_comes_from_the_environment(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENDPOINT_PORT", "18123")
    assert endpoint_target().port == 18123


def test_sagemaker_target_takes_its_settings_as_env_vars(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENDPOINT_TARGET", "sagemaker")
    for name in SAGEMAKER_ENV.values():
        clean_env.setenv(name, f"value-of-{name}")
    target = endpoint_target()
    assert isinstance(target, SageMakerEndpointTarget)
    assert target.endpoint_name == dg.EnvVar("GEO_BUSYNESS_SAGEMAKER_ENDPOINT")


def test_sagemaker_target_names_the_missing_variables(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENDPOINT_TARGET", "sagemaker")
    clean_env.setenv("GEO_BUSYNESS_SAGEMAKER_ENDPOINT", "busyness")
    with pytest.raises(ValueError, match=r"GEO_BUSYNESS_SAGEMAKER_ROLE_ARN.*BUCKET"):
        endpoint_target()


def test_an_unknown_target_is_refused(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENDPOINT_TARGET", "kubernetes")
    with pytest.raises(ValueError, match="must be 'local' or 'sagemaker'"):
        endpoint_target()
