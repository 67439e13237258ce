"""deploy/ecs/dagster.yaml launches our runs as ECS tasks: the real EcsRunLauncher, configured
from that file, against moto's ECS, EC2 and Secrets Manager API on 127.0.0.1.

As in production the launcher runs inside the daemon's own Fargate task: the test starts that
task in moto and serves the task metadata endpoint Fargate injects (ECS_CONTAINER_METADATA_URI_V4)
on loopback, since no ECS agent runs here. A run of ``regina__daily_data_job`` (and one of
``training_job``) is created from the code location ``geo_busyness.definitions`` loaded in
process, as the webserver or a sensor would, and launched through ``instance.launch_run``.
Moto does not run containers, so this proves the ECS API calls (task definition, command,
resources, secrets, network, cluster), not the container itself.
"""

from __future__ import annotations

import json
import sys
import threading
import types
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ECS_FRAGMENT = REPO / "deploy" / "ecs" / "dagster.yaml"
CLUSTER = "geo-busyness"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/geo-busyness:0.1.0"
DAEMON_CONTAINER = "dagster-daemon"
# What the daemon's task definition would set (infrastructure as code) for the launcher.
DAEMON_ENVIRONMENT = {
    "DAGSTER_ECS_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/geo-busyness-execution",
    "DAGSTER_ECS_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/geo-busyness-run",
    "DAGSTER_ECS_LOG_GROUP": "/geo-busyness/runs",
    "GEO_BUSYNESS_BUCKET": "geo-busyness-prod",
    "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
    "GEO_BUSYNESS_SAGEMAKER_ENDPOINT": "geo-busyness",
    "GEO_BUSYNESS_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/geo-busyness-sagemaker",
    "GEO_BUSYNESS_SAGEMAKER_IMAGE_URI": IMAGE,
    "GEO_BUSYNESS_SAGEMAKER_BUCKET": "geo-busyness-models",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_HOST": "dagster-db.internal",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_PORT": "5432",
}
SECRETS = ("DAGSTER_PG_PASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class Ecs:
    """The fake account: moto clients, the daemon's task and its subnet, the secrets' ARNs."""

    ecs: Any
    subnet: str
    security_group: str
    cluster_arn: str
    daemon_task_arn: str
    secret_arns: dict[str, str]

    def run_tasks(self) -> list[dict[str, Any]]:
        """Every task in the cluster but the daemon's."""
        arns = self.ecs.list_tasks(cluster=CLUSTER)["taskArns"]
        tasks = self.ecs.describe_tasks(cluster=CLUSTER, tasks=arns, include=["TAGS"])["tasks"]
        return [task for task in tasks if task["taskArn"] != self.daemon_task_arn]


@pytest.fixture
def fargate_in_moto(monkeypatch):
    """moto 5.2 sums container-level memory to place a task, which Fargate task definitions
    (such as the launcher's, with memory on the task only) may leave out: count it as 0."""
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend._calculate_task_resource_requirements

    def tolerant(task_definition):
        containers = [
            {**container, "memory": container.get("memory") or 0}
            for container in task_definition.container_definitions
        ]
        return original(types.SimpleNamespace(container_definitions=containers))

    monkeypatch.setattr(
        EC2ContainerServiceBackend, "_calculate_task_resource_requirements", staticmethod(tolerant)
    )


def serve_task_metadata(cluster_arn: str, task_arn: str) -> ThreadingHTTPServer:
    """The ECS task metadata endpoint (v4) of the daemon's task, as Fargate serves it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith("/task"):
                body = {"Cluster": cluster_arn, "TaskARN": task_arn}
            else:
                body = {"Name": DAEMON_CONTAINER}
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def aws(moto_server, fargate_in_moto, monkeypatch) -> Iterator[Ecs]:
    """Our cluster in a VPC, the daemon's Fargate task running in it, the run secrets in
    Secrets Manager, and the daemon's environment in this process; a fresh account each test."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)  # the launcher builds its own clients
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="dagster", Description="runs", VpcId=vpc)
    ecs = boto3.client("ecs")
    cluster_arn = ecs.create_cluster(clusterName=CLUSTER)["cluster"]["clusterArn"]
    ecs.register_task_definition(
        family="dagster-daemon",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": DAEMON_CONTAINER,
                "image": IMAGE,
                "command": ["dagster-daemon", "run"],
                "environment": [{"name": k, "value": v} for k, v in DAEMON_ENVIRONMENT.items()],
            }
        ],
    )
    daemon = ecs.run_task(
        cluster=CLUSTER,
        taskDefinition="dagster-daemon",
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group["GroupId"]]}
        },
    )["tasks"][0]
    secrets = boto3.client("secretsmanager")
    secret_arns = {
        name: secrets.create_secret(Name=f"geo-busyness/{name}", SecretString="s3cret")["ARN"]
        for name in SECRETS
    }
    boto3.client("s3").create_bucket(Bucket=DAEMON_ENVIRONMENT["GEO_BUSYNESS_BUCKET"])

    metadata = serve_task_metadata(cluster_arn, daemon["taskArn"])
    monkeypatch.setenv(
        "ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{metadata.server_address[1]}/v4"
    )
    for name, value in DAEMON_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    for name, arn in secret_arns.items():
        monkeypatch.setenv(f"{name}_SECRET_ARN", arn)
    try:
        yield Ecs(ecs, subnet, group["GroupId"], cluster_arn, daemon["taskArn"], secret_arns)
    finally:
        metadata.shutdown()
        metadata.server_close()


@pytest.fixture
def instance(aws, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    """DAGSTER_HOME holding deploy/ecs/dagster.yaml (SQLite storage: no Postgres here)."""
    config = yaml.safe_load(ECS_FRAGMENT.read_text())
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.fixture
def workspace(instance) -> Iterator[WorkspaceRequestContext]:
    """The code location as the code server serves it, with the image it reports."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name="geo_busyness.definitions",
            working_directory=str(REPO),
        ),
        container_image=IMAGE,
        location_name="geo_busyness",
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context.create_request_context()


def launch(
    instance: dg.DagsterInstance,
    workspace: WorkspaceRequestContext,
    job_name: str,
    tags: dict[str, str],
) -> dg.DagsterRun:
    from geo_busyness.definitions import defs

    location = workspace.get_code_location("geo_busyness")
    (repository,) = location.get_repositories().values()
    remote_job = repository.get_full_job(job_name)
    run = instance.create_run_for_job(
        defs.resolve_job_def(job_name),
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        tags=tags,
    )
    instance.launch_run(run.run_id, workspace)
    return run


def test_a_day_partition_run_becomes_a_fargate_task_in_our_cluster(aws, instance, workspace):
    config = yaml.safe_load(ECS_FRAGMENT.read_text())["run_launcher"]["config"]
    run = launch(instance, workspace, "regina__daily_data_job", {"dagster/partition": "2026-06-01"})

    (task,) = aws.run_tasks()
    assert task["clusterArn"] == aws.cluster_arn
    assert task["launchType"] == "FARGATE"
    (attachment,) = task["attachments"]
    assert {"name": "subnetId", "value": aws.subnet} in attachment["details"]
    assert {"key": "dagster/run_id", "value": run.run_id} in task["tags"]
    assert instance.get_run_by_id(run.run_id).tags["ecs/task_arn"] == task["taskArn"]

    # The run worker's command: Dagster's execute_run for this run, with the instance config
    # (S3 compute logs, this launcher) it needs, since the task has no dagster.yaml.
    (override,) = task["overrides"]["containerOverrides"]
    assert override["name"] == config["container_name"]
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
    args = deserialize_value(override["command"][3], ExecuteRunArgs)
    assert args.run_id == run.run_id
    assert args.job_origin.job_name == "regina__daily_data_job"
    assert args.instance_ref.run_launcher_data.class_name == "EcsRunLauncher"
    assert args.instance_ref.compute_logs_data.class_name == "S3ComputeLogManager"

    # Sized by run_resources, for the task and its container.
    resources = config["run_resources"]
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == (
        resources["cpu"],
        resources["memory"],
    )
    assert (override["cpu"], override["memory"]) == (
        int(resources["cpu"]),
        int(resources["memory"]),
    )

    # The task definition the launcher registered: our image, roles, logs, variables, secrets.
    definition = aws.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
        "taskDefinition"
    ]
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["executionRoleArn"] == DAEMON_ENVIRONMENT["DAGSTER_ECS_EXECUTION_ROLE_ARN"]
    assert definition["taskRoleArn"] == DAEMON_ENVIRONMENT["DAGSTER_ECS_TASK_ROLE_ARN"]
    (container,) = definition["containerDefinitions"]
    assert container["name"] == config["container_name"]
    assert container["image"] == IMAGE
    log_options = container["logConfiguration"]["options"]
    assert log_options["awslogs-group"] == DAEMON_ENVIRONMENT["DAGSTER_ECS_LOG_GROUP"]
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert environment["GEO_BUSYNESS_ENV"] == "aws"
    for name, value in DAEMON_ENVIRONMENT.items():
        if not name.startswith("DAGSTER_ECS_"):
            assert environment[name] == value, name
    assert {item["name"]: item["valueFrom"] for item in container["secrets"]} == aws.secret_arns
    assert not set(SECRETS) & environment.keys(), "a secret's value in plain environment"


def test_training_gets_a_bigger_task_from_its_run_tags(aws, instance, workspace):
    """The override deploy/ecs/dagster.yaml documents for training_job."""
    launch(instance, workspace, "training_job", {"ecs/cpu": "4096", "ecs/memory": "16384"})

    (task,) = aws.run_tasks()
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("4096", "16384")
    (override,) = task["overrides"]["containerOverrides"]
    assert (override["cpu"], override["memory"]) == (4096, 16384)
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
