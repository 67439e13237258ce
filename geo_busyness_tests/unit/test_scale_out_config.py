"""The scale-out deployment files agree with Dagster's real config schemas and with our code.

No cluster runs here: ``deploy/k8s/values.yaml`` is rendered the way the Dagster Helm chart's
templates render it (``helm/dagster/templates/helpers/instance/*.tpl``, mirrored in
``chart_instance_config``) and the result is checked with the schemas of the installed
dagster-k8s; ``deploy/ecs/dagster.yaml`` with dagster-aws's; the ``container_context`` of
``dagster_cloud.yaml`` with the functions the Dagster+ agents call. The other checks tie the files
to the image (Dockerfile, pyproject.toml) and to the environment variables the code reads.
A launch against moto's ECS is in ``integration/test_ecs_run_launcher.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_aws.ecs import EcsRunLauncher
from dagster_aws.ecs.container_context import EcsContainerContext
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext

from geo_busyness.definitions import executor
from geo_busyness.resources.environment import build_resources
from geo_busyness.resources.settings import DEFAULT_CODE_LOCATION, EXECUTOR_ENV

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HELM_VALUES = REPO / "deploy" / "k8s" / "values.yaml"
ECS_FRAGMENT = REPO / "deploy" / "ecs" / "dagster.yaml"
PRODUCTION_INSTANCE = REPO / "deploy" / "instance" / "dagster.yaml"
DAGSTER_CLOUD = REPO / "dagster_cloud.yaml"

# Variables the deploy files name that geo_busyness does not read itself, and who does.
PLATFORM_VARIABLES = {
    "DAGSTER_PG_USERNAME": "the Postgres storage of deploy/instance/dagster.yaml",
    "DAGSTER_PG_PASSWORD": "the Postgres storage of deploy/instance/dagster.yaml",
    "DAGSTER_PG_HOST": "the Postgres storage of deploy/instance/dagster.yaml",
    "DAGSTER_PG_DB": "the Postgres storage of deploy/instance/dagster.yaml",
    "DAGSTER_PG_PORT": "the Postgres storage of deploy/instance/dagster.yaml",
    "DAGSTER_PG_PASSWORD_SECRET_ARN": "EcsRunLauncher (secrets)",
    "MLFLOW_TRACKING_USERNAME_SECRET_ARN": "EcsRunLauncher (secrets)",
    "MLFLOW_TRACKING_PASSWORD_SECRET_ARN": "EcsRunLauncher (secrets)",
    "DAGSTER_ECS_EXECUTION_ROLE_ARN": "EcsRunLauncher (task_definition)",
    "DAGSTER_ECS_TASK_ROLE_ARN": "EcsRunLauncher (task_definition)",
    "DAGSTER_ECS_LOG_GROUP": "EcsRunLauncher (task_definition)",
    "MLFLOW_TRACKING_USERNAME": "the MLflow client (basic auth of the tracking server)",
    "MLFLOW_TRACKING_PASSWORD": "the MLflow client (basic auth of the tracking server)",
}

# The keys of a location in dagster_cloud.yaml (dagster_cloud_cli.config.models.Location, which
# forbids any other; dagster-cloud-cli is not a dependency here).
LOCATION_KEYS = {
    "location_name",
    "code_source",
    "build",
    "working_directory",
    "image",
    "executable_path",
    "attribute",
    "container_context",
    "agent_queue",
}
CODE_SOURCE_KEYS = {"package_name", "module_name", "python_file", "autoload_defs_module_name"}
BUILD_KEYS = {"directory", "registry"}

# runLauncher.config.k8sRunLauncher key -> K8sRunLauncher config field, as the chart's
# _run-launcher.tpl renders it (lists of {name: ...} become lists of names).
K8S_RUN_LAUNCHER_FIELDS = {
    "loadInclusterConfig": "load_incluster_config",
    "kubeconfigFile": "kubeconfig_file",
    "jobNamespace": "job_namespace",
    "imagePullPolicy": "image_pull_policy",
    "envConfigMaps": "env_config_maps",
    "envSecrets": "env_secrets",
    "envVars": "env_vars",
    "volumeMounts": "volume_mounts",
    "volumes": "volumes",
    "labels": "labels",
    "resources": "resources",
    "failPodOnRunFailure": "fail_pod_on_run_failure",
    "schedulerName": "scheduler_name",
    "securityContext": "security_context",
    "runK8sConfig": "run_k8s_config",
}
RUN_K8S_CONFIG_FIELDS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}
QUEUED_RUN_COORDINATOR_FIELDS = {
    "maxConcurrentRuns": "max_concurrent_runs",
    "tagConcurrencyLimits": "tag_concurrency_limits",
    "dequeueIntervalSeconds": "dequeue_interval_seconds",
    "dequeueUseThreads": "dequeue_use_threads",
    "dequeueNumWorkers": "dequeue_num_workers",
}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    return load(HELM_VALUES)


@pytest.fixture(scope="module")
def ecs() -> dict[str, Any]:
    return load(ECS_FRAGMENT)


@pytest.fixture(scope="module")
def cloud_location() -> dict[str, Any]:
    (location,) = load(DAGSTER_CLOUD)["locations"]
    return location


@pytest.fixture(scope="module")
def user_deployment(helm) -> dict[str, Any]:
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    return deployment


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]


@pytest.fixture(scope="module")
def image_cmd() -> list[str]:
    """The image's default command: the CMD of the Dockerfile (exec form)."""
    (cmd,) = re.findall(r"^CMD (\[.*\])$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return json.loads(cmd)


def assert_valid(schema: Any, config: Any, what: str) -> None:
    result = validate_config(schema, config)
    assert result.success, f"{what}: " + "; ".join(error.message for error in result.errors)


def check_configurable_class(block: dict[str, Any]) -> None:
    """A ``module``/``class``/``config`` block of an instance file: the class exists and
    accepts the config."""
    cls = getattr(importlib.import_module(block["module"]), block["class"])
    assert_valid(cls.config_type(), block.get("config", {}), f"{block['class']} config")


def check_instance(tmp_path: Path, text: str) -> dict[str, Any]:
    """Load ``text`` as ``$DAGSTER_HOME/dagster.yaml`` with Dagster's own loader and schema."""
    (tmp_path / "dagster.yaml").write_text(text)
    config, _ = dagster_instance_config(str(tmp_path))
    for value in config.values():
        if isinstance(value, dict) and {"module", "class"} <= value.keys():
            check_configurable_class(value)
    return config


def chart_instance_config(helm: dict[str, Any]) -> dict[str, Any]:
    """The instance parts the chart renders from these values (storage, run launcher, run
    coordinator, compute logs), with the fixed fields its templates add."""
    pg = helm["postgresql"]
    launcher = helm["runLauncher"]["config"]["k8sRunLauncher"]
    unknown = launcher.keys() - K8S_RUN_LAUNCHER_FIELDS.keys()
    assert not unknown, f"the chart does not render {sorted(unknown)} into the run launcher"
    config: dict[str, Any] = {
        "load_incluster_config": True,
        "job_namespace": "dagster",
        "service_account_name": "dagster",
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": helm["global"]["postgresqlSecretName"],
    }
    for key, value in launcher.items():
        if key in ("envConfigMaps", "envSecrets"):
            value = [item["name"] for item in value]
        if key == "runK8sConfig":
            value = {RUN_K8S_CONFIG_FIELDS[name]: part for name, part in value.items()}
        config[K8S_RUN_LAUNCHER_FIELDS[key]] = value
    queued = helm["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    compute_logs = helm["computeLogManager"]
    assert compute_logs["type"] == "S3ComputeLogManager"
    return {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": pg["postgresqlUsername"],
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "hostname": pg["postgresqlHost"],
                    "db_name": pg["postgresqlDatabase"],
                    "port": pg["service"]["port"],
                    "scheme": pg["postgresqlScheme"],
                }
            }
        },
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {QUEUED_RUN_COORDINATOR_FIELDS[k]: v for k, v in queued.items()},
        },
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": compute_logs["config"]["s3ComputeLogManager"],
        },
    }


def env_names(entries: list[str]) -> set[str]:
    """Names of ``KEY`` / ``KEY=VALUE`` entries (env_vars of launchers and container contexts)."""
    return {entry.split("=", 1)[0] for entry in entries}


def env_refs(node: Any) -> set[str]:
    """Every variable a ``{env: NAME}`` config source names, anywhere under ``node``."""
    if isinstance(node, dict):
        if node.keys() == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(env_refs(value) for value in node))
    return set()


def target_environments(helm, ecs, cloud_location) -> dict[str, dict[str, str | None]]:
    """What each target sets for the code: name -> fixed value, or None when the value comes
    from elsewhere (a bare KEY, a secret)."""

    def from_entries(entries: list[str]) -> dict[str, str | None]:
        return {
            name: (value[0] if value else None)
            for name, *value in (entry.split("=", 1) for entry in entries)
        }

    launcher = ecs["run_launcher"]["config"]
    context = cloud_location["container_context"]
    return {
        "helm": dict(helm["dagster-user-deployments"]["deployments"][0]["env"]),
        "ecs": {
            **from_entries(launcher["env_vars"]),
            **{secret["name"]: None for secret in launcher["secrets"]},
        },
        "dagster+ k8s": from_entries(context["k8s"]["env_vars"]),
        "dagster+ ecs": from_entries(context["ecs"]["env_vars"]),
    }


# ----------------------------------------------------------------------------- files parse


@pytest.mark.parametrize("path", [HELM_VALUES, ECS_FRAGMENT, DAGSTER_CLOUD], ids=lambda p: p.name)
def test_every_deploy_file_is_a_yaml_mapping(path):
    assert load(path)


# ------------------------------------------------------------------------------ Kubernetes


def test_helm_values_render_to_a_valid_instance_with_the_k8s_run_launcher(helm, tmp_path):
    rendered = chart_instance_config(helm)
    config = check_instance(tmp_path, yaml.safe_dump(rendered))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm["dagsterDaemon"]["enabled"] is True
    assert helm["dagsterDaemon"]["runCoordinator"]["enabled"] is True


def test_helm_run_queue_is_the_production_instance_queue(helm):
    """At most one run per day partition at a time, as in deploy/instance/dagster.yaml."""
    queue = chart_instance_config(helm)["run_coordinator"]["config"]
    assert queue == load(PRODUCTION_INSTANCE)["concurrency"]["runs"]
    assert {
        "key": "dagster/partition",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in queue["tag_concurrency_limits"]


def test_run_pods_have_requests_and_limits(helm):
    resources = helm["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_a_misspelled_run_launcher_field_is_refused(helm):
    """The schema check above is strict: a key K8sRunLauncher does not know fails it."""
    rendered = chart_instance_config(helm)["run_launcher"]["config"]
    result = validate_config(K8sRunLauncher.config_type(), {**rendered, "resource": {}})
    assert not result.success


def test_helm_postgres_is_external_and_its_password_never_inline(helm):
    assert helm["postgresql"]["enabled"] is False
    assert helm["generatePostgresqlPasswordSecret"] is False
    assert helm["global"]["postgresqlSecretName"]
    assert "postgresqlPassword" not in helm["postgresql"]


def test_user_code_deployment_runs_the_image_default_command(user_deployment, image_cmd, pyproject):
    """The chart starts `dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>`: the
    same command as the image's CMD, on the same module and port."""
    chart_command = [
        "dagster",
        "code-server",
        "start",
        "-h",
        "0.0.0.0",
        "-p",
        str(user_deployment["port"]),
        *user_deployment["codeServerArgs"],
    ]
    assert chart_command == image_cmd
    assert user_deployment["codeServerArgs"] == ["-m", pyproject["module_name"]]
    assert "dagsterApiGrpcArgs" not in user_deployment


def test_user_code_config_reaches_the_runs(user_deployment):
    assert user_deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert "resources" not in user_deployment, "would override the run launcher's resources"
    assert [secret["name"] for secret in user_deployment["envSecrets"]]


def test_helm_compute_logs_go_to_the_code_bucket(helm, user_deployment):
    bucket = helm["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"]
    assert bucket == user_deployment["env"]["GEO_BUSYNESS_BUCKET"]


# ------------------------------------------------------------------------------------- ECS


def test_ecs_fragment_added_to_the_production_instance_is_a_valid_instance(ecs, tmp_path):
    """`cat deploy/instance/dagster.yaml deploy/ecs/dagster.yaml`, as the fragment says."""
    production = load(PRODUCTION_INSTANCE)
    assert not production.keys() & ecs.keys(), "cat would silently override these keys"
    text = PRODUCTION_INSTANCE.read_text() + "\n" + ECS_FRAGMENT.read_text()
    config = check_instance(tmp_path, text)
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    assert "postgres" in config["storage"]


def test_ecs_run_launcher_config_matches_the_schema(ecs):
    block = ecs["run_launcher"]
    assert (block["module"], block["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    assert_valid(EcsRunLauncher.config_type(), block["config"], "EcsRunLauncher config")
    misspelled = {**block["config"], "run_resource": {}}
    assert not validate_config(EcsRunLauncher.config_type(), misspelled).success


def test_ecs_compute_logs_match_the_schema(ecs):
    assert_valid(S3ComputeLogManager.config_type(), ecs["compute_logs"]["config"], "compute logs")


def test_ecs_run_tasks_get_every_variable_the_instance_reads(ecs):
    """A run task opens the instance from the config in its command, so it needs each variable
    the storage and compute logs name (the launcher's own ones stay with the daemon)."""
    launcher = ecs["run_launcher"]["config"]
    given = env_names(launcher["env_vars"]) | {secret["name"] for secret in launcher["secrets"]}
    needed = env_refs(load(PRODUCTION_INSTANCE)) | env_refs(ecs["compute_logs"])
    assert needed - given == set()


def test_ecs_secrets_come_by_arn_from_the_environment(ecs):
    launcher = ecs["run_launcher"]["config"]
    for secret in launcher["secrets"]:
        assert set(secret["valueFrom"]) == {"env"}, f"{secret['name']}: ARN inline"
    assert launcher["secrets_tag"] is None


def test_ecs_run_resources_are_a_fargate_size(ecs):
    """Fargate takes 1 vCPU with 2-8 GB of memory, in 1 GB steps."""
    resources = ecs["run_launcher"]["config"]["run_resources"]
    assert resources["cpu"] == "1024"
    assert 2048 <= int(resources["memory"]) <= 8192
    assert int(resources["memory"]) % 1024 == 0


# --------------------------------------------------------------------------------- Dagster+


def test_dagster_cloud_location_is_the_pyproject_code_location(cloud_location, pyproject):
    assert set(cloud_location) <= LOCATION_KEYS
    assert set(cloud_location["code_source"]) <= CODE_SOURCE_KEYS
    assert set(cloud_location["build"]) <= BUILD_KEYS
    assert cloud_location["location_name"] == pyproject["code_location_name"]
    assert cloud_location["code_source"] == {"module_name": pyproject["module_name"]}
    assert (REPO / cloud_location["build"]["directory"] / "Dockerfile").is_file()


def test_every_config_names_the_code_location_the_runner_files_its_runs_under(pyproject):
    """`geo-busyness run` tags its in-process runs with the code location's name (a job's page
    lists them by it): the default must be what the workspace and pyproject call it."""
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    [location] = workspace["load_from"]
    assert location["python_module"]["location_name"] == DEFAULT_CODE_LOCATION
    assert pyproject["code_location_name"] == DEFAULT_CODE_LOCATION


def test_dagster_cloud_container_context_is_valid_for_both_agents(cloud_location, monkeypatch):
    """The functions the Kubernetes and ECS agents (and launchers) parse it with; a bare KEY
    is read from the agent's environment right then."""
    context = cloud_location["container_context"]
    assert set(context) == {"k8s", "ecs"}
    for section in context.values():
        for entry in section["env_vars"]:
            if "=" not in entry:
                monkeypatch.setenv(entry, f"agent-value-of-{entry}")
    k8s = K8sContainerContext.create_from_config(context)
    for pod, config in (("run", k8s.run_k8s_config), ("server", k8s.server_k8s_config)):
        container = config.container_config
        assert {"name": "GEO_BUSYNESS_ENV", "value": "aws"} in container["env"], pod
        assert {"secret_ref": {"name": "geo-busyness"}} in container["env_from"], pod
        expected = context["k8s"][f"{pod}_k8s_config"]["container_config"]["resources"]
        assert container["resources"] == expected, pod
    ecs = EcsContainerContext.create_from_config(context)
    assert ecs.get_environment_dict()["GEO_BUSYNESS_ENV"] == "aws"
    assert ecs.secrets_tags == ["geo-busyness"]
    assert ecs.run_resources == context["ecs"]["run_resources"]


def test_dagster_cloud_resources_mirror_the_oss_deployments(cloud_location, helm, ecs):
    context = cloud_location["container_context"]
    run_k8s = context["k8s"]["run_k8s_config"]["container_config"]["resources"]
    assert run_k8s == helm["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert context["ecs"]["run_resources"] == ecs["run_launcher"]["config"]["run_resources"]


# ------------------------------------------------------------------- environment variables


def test_every_variable_named_is_read_by_the_code_or_the_platform(helm, ecs, cloud_location):
    source = "\n".join(path.read_text() for path in (REPO / "geo_busyness").rglob("*.py"))
    read_by_code = set(re.findall(r"[\"']([A-Z][A-Z0-9_]+)[\"']", source))
    named = set().union(*target_environments(helm, ecs, cloud_location).values())
    named |= env_refs(ecs)
    unknown = named - read_by_code - PLATFORM_VARIABLES.keys()
    assert unknown == set(), "named in deploy files, read by nothing"
    assert PLATFORM_VARIABLES.keys() <= named, "allow-list entries no deploy file uses"


def test_no_secret_is_set_inline(helm, ecs, cloud_location):
    for target, env in target_environments(helm, ecs, cloud_location).items():
        for name, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", name):
                assert value is None, f"{target}: {name} is set inline"


def test_every_target_sets_the_same_code_variables(helm, ecs, cloud_location):
    """Same names everywhere; only the executor differs (k8s on Kubernetes) and the Postgres
    of open-source ECS (Dagster+ has its own storage)."""
    envs = {
        target: set(env) - {EXECUTOR_ENV} - set(PLATFORM_VARIABLES)
        for target, env in target_environments(helm, ecs, cloud_location).items()
    }
    assert len({frozenset(names) for names in envs.values()}) == 1, envs
    assert envs["helm"] >= {"GEO_BUSYNESS_ENV", "GEO_BUSYNESS_BUCKET", "MLFLOW_TRACKING_URI"}


@pytest.mark.parametrize(
    ("target", "expected_executor"),
    [
        ("helm", "k8s"),
        ("ecs", "in_process"),
        ("dagster+ k8s", "k8s"),
        ("dagster+ ecs", "in_process"),
    ],
)
def test_each_target_environment_loads_the_resources(
    target, expected_executor, helm, ecs, cloud_location, monkeypatch
):
    """With only what the target sets (any value where it comes from elsewhere), the code
    location's resources build: no variable GEO_BUSYNESS_ENV=aws needs is missing."""
    for name in list(os.environ):
        if name.startswith(("GEO_BUSYNESS_", "MLFLOW_")):
            monkeypatch.delenv(name)
    for name, value in target_environments(helm, ecs, cloud_location)[target].items():
        monkeypatch.setenv(name, value if value is not None else f"set-by-platform-{name}")
    assert os.environ["GEO_BUSYNESS_ENV"] == "aws"
    resources = build_resources()
    assert type(resources["endpoint"]).__name__ == "SageMakerEndpointTarget"
    assert executor().name == expected_executor


# ------------------------------------------------------------------------------ executor()


def test_executor_defaults_to_in_process(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert executor().name == "in_process"


def test_k8s_executor_runs_steps_as_kubernetes_jobs(monkeypatch):
    from dagster_k8s import k8s_job_executor

    monkeypatch.setenv(EXECUTOR_ENV, "k8s")
    assert executor() is k8s_job_executor
    assert executor().name == "k8s"


def test_unknown_executor_names_the_choices(monkeypatch):
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    with pytest.raises(ValueError, match=r"in_process.*multiprocess.*k8s.*'celery'"):
        executor()
