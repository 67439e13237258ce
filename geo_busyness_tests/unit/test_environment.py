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
    """No setting at all (the root conftest already cleared every other one)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
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


def _stack_env(env):
    env.setenv("GEO_BUSYNESS_ENV", "stack")
    env.setenv("GEO_BUSYNESS_S3_ENDPOINT_URL", "http://127.0.0.1:8333")
    env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")


def test_local_keeps_everything_in_directories(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENV", "local")
    resources = build_resources()
    assert not resources["landing_zone"].location("raw/").startswith("s3://")
    assert not resources["io_manager"].base_path.startswith("s3://")
    assert not resources["report_store"].base_path.startswith("s3://")


def test_stack_puts_landing_assets_and_reports_in_one_bucket_on_the_s3_endpoint(clean_env):
    _stack_env(clean_env)
    resources = build_resources()
    assert resources["landing_zone"].location("raw/") == "s3://geo-busyness/landing/raw/"
    for key in ("io_manager", "object_io_manager"):
        assert resources[key].base_path == "s3://geo-busyness/assets"
        assert resources[key].s3_endpoint_url == dg.EnvVar("GEO_BUSYNESS_S3_ENDPOINT_URL")
    assert resources["report_store"].base_path == "s3://geo-busyness/reports"
    assert resources["landing_zone"].s3.endpoint_url == dg.EnvVar("GEO_BUSYNESS_S3_ENDPOINT_URL")
    assert resources["mlflow_tracking"].tracking_uri == dg.EnvVar("MLFLOW_TRACKING_URI")
    assert isinstance(resources["endpoint"], LocalEndpointTarget)


def test_a_set_variable_overrides_the_environment_default(clean_env):
    _stack_env(clean_env)
    clean_env.setenv("GEO_BUSYNESS_BUCKET", "other")
    clean_env.setenv("GEO_BUSYNESS_LANDING_ZONE", "s3://drop-zone/couriers")
    resources = build_resources()
    assert resources["landing_zone"].root == dg.EnvVar("GEO_BUSYNESS_LANDING_ZONE")
    assert resources["io_manager"].base_path == "s3://other/assets"


def test_stack_names_what_it_misses(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENV", "stack")
    with pytest.raises(ValueError, match=r"GEO_BUSYNESS_S3_ENDPOINT_URL, MLFLOW_TRACKING_URI"):
        build_resources()


def test_aws_deploys_to_sagemaker_and_needs_a_bucket_and_a_tracking_server(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENV", "aws")
    with pytest.raises(ValueError, match=r"GEO_BUSYNESS_BUCKET, MLFLOW_TRACKING_URI"):
        build_resources()
    clean_env.setenv("GEO_BUSYNESS_BUCKET", "busyness-prod")
    clean_env.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.internal")
    for name in SAGEMAKER_ENV.values():
        clean_env.setenv(name, f"value-of-{name}")
    resources = build_resources()
    assert isinstance(resources["endpoint"], SageMakerEndpointTarget)
    assert resources["io_manager"].base_path == "s3://busyness-prod/assets"
    assert resources["io_manager"].s3_endpoint_url is None  # AWS's own endpoint


def test_an_unknown_environment_is_refused(clean_env):
    clean_env.setenv("GEO_BUSYNESS_ENV", "production")
    with pytest.raises(ValueError, match="local, stack, aws"):
        build_resources()


def test_every_variable_the_package_reads_is_declared_in_settings():
    """The root conftest clears ENVIRONMENT_VARIABLES around every test: a name declared
    elsewhere would leak a developer's shell into the tests."""
    import re
    from pathlib import Path

    import geo_busyness
    from geo_busyness.resources import settings

    package = Path(geo_busyness.__file__).parent
    named = {
        (path.relative_to(package).as_posix(), name)
        for path in package.rglob("*.py")
        if path.name != "settings.py"
        for name in re.findall(r"[\"'](GEO_BUSYNESS_[A-Z0-9_]+)[\"']", path.read_text())
    }
    assert {item for item in named if item[1] not in settings.ENVIRONMENT_VARIABLES} == set()
    declared = re.findall(r"\"(GEO_BUSYNESS_[A-Z0-9_]+)\"", Path(settings.__file__).read_text())
    assert set(declared) <= set(settings.ENVIRONMENT_VARIABLES)


def test_every_resource_the_definitions_require_is_built(clean_env, tmp_path):
    """For a catalog of several cities: each asset, check and sensor finds its resources
    (e.g. the new ``data_quality_policy`` of ``quarantine_share_is_low``)."""
    from geo_busyness.core.catalog import load_catalog
    from geo_busyness.definitions import build_definitions
    from geo_busyness.resources.quality import DataQualityPolicy

    catalog = tmp_path / "cities.yaml"
    catalog.write_text(
        "cities:\n"
        "  - {id: regina, name: Regina, center: [50.4452, -104.6189], service_radius_km: 12,"
        " timezone: America/Regina, h3_resolution: 7}\n"
        "  - {id: new-york, name: New York, center: [40.7549, -73.984], service_radius_km: 8,"
        " timezone: America/New_York, h3_resolution: 8}\n"
    )
    defs = build_definitions(load_catalog(catalog))
    resources = build_resources()
    required = set()
    for asset in defs.assets:
        required |= asset.required_resource_keys
    for check in defs.asset_checks:
        required |= check.required_resource_keys
    for sensor in defs.sensors:
        required |= sensor.required_resource_keys
    assert {"landing_zone", "io_manager", "data_quality_policy"} <= required
    assert required <= set(resources)
    assert isinstance(resources["data_quality_policy"], DataQualityPolicy)
    assert resources["data_quality_policy"].max_quarantine_share == 0.2
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"regina/raw_courier_pings", "new_york/raw_courier_pings", "unrouted_pings"} <= keys


def test_building_the_definitions_warns_of_nothing(clean_env):
    """A quiet console: the Beta/Preview features we chose are silenced where we use them,
    and nothing else warns that a console shows (Python hides deprecation warnings of
    libraries by default; pytest's own filters do not apply inside this block)."""
    import warnings

    from geo_busyness.core.catalog import load_configured_catalog
    from geo_busyness.definitions import build_definitions

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_definitions(load_configured_catalog()).get_repository_def()
    hidden = (DeprecationWarning, PendingDeprecationWarning)
    shown = [w for w in caught if not issubclass(w.category, hidden)]
    assert [f"{w.category.__name__}: {w.message}" for w in shown] == []


def test_the_local_instance_sends_no_telemetry_and_shows_no_community_dialog():
    import yaml

    from geo_busyness.runner import LOCAL_INSTANCE_SETTINGS

    settings = yaml.safe_load(LOCAL_INSTANCE_SETTINGS.read_text())
    assert settings["telemetry"] == settings["nux"] == {"enabled": False}
