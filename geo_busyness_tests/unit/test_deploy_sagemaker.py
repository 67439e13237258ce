"""SageMaker target: update, rollback and request shapes with botocore's Stubber.

Why Stubber here: moto 5.2 does not implement ``update_endpoint`` (NotImplementedError), so
the update and rollback paths cannot run against moto; the create path runs against a real
moto server in ``integration/test_deployment.py``. The Stubber checks every request against
the botocore service model, so a misspelt parameter fails here as it would on AWS.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from geo_busyness.deploy import DeploymentFailed, SageMakerConfig, SageMakerEndpoint, SmokeTest
from geo_busyness.deploy.sagemaker import NAME_MAX, package_bundle, resource_name

pytestmark = pytest.mark.unit

ENDPOINT = "hex-busyness"
OLD_CONFIG = "hex-busyness-v1-20250101T000000-aaaa"
OLD_MODEL = OLD_CONFIG
INSTANCES = [{"h3_cell": "8928308280fffff", "timestamp": "2025-03-01T10:15:00Z"}]
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def make_bundle(root: Path, version: str) -> Path:
    bundle = root / f"bundle-{version}"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(
        json.dumps({"model_name": "hex_busyness", "model_version": version})
    )
    (bundle / "model.ubj").write_bytes(b"model")
    return bundle


class Recorder:
    """Every (operation, params) a client sends, in order, as the service model sees them."""

    def __init__(self, *clients: Any) -> None:
        self.calls: list[tuple[str, dict]] = []
        for client in clients:
            client.meta.events.register("before-parameter-build.*.*", self._record)

    def _record(self, params: dict, model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def params(self, operation: str) -> list[dict]:
        return [params for name, params in self.calls if name == operation]


class Fake:
    """Stubbed sagemaker, sagemaker-runtime and s3 clients and a target using them."""

    def __init__(self, **config: Any) -> None:
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        self.sagemaker = session.client("sagemaker")
        self.runtime = session.client("sagemaker-runtime")
        self.s3 = session.client("s3")
        self.sm_stub, self.rt_stub, self.s3_stub = (
            Stubber(self.sagemaker),
            Stubber(self.runtime),
            Stubber(self.s3),
        )
        self.recorder = Recorder(self.sagemaker, self.runtime, self.s3)
        self.sleeps: list[float] = []
        self.target = SageMakerEndpoint(
            SageMakerConfig(
                endpoint_name=ENDPOINT,
                role_arn="arn:aws:iam::123456789012:role/sm",
                image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/geo-busyness:1",
                model_bucket="models",
                model_prefix="deployments",
                capture_bucket="capture",
                capture_prefix="traffic",
                poll_delay_seconds=5,
                **config,
            ),
            sagemaker_client=self.sagemaker,
            runtime_client=self.runtime,
            s3_client=self.s3,
            sleep=self.sleeps.append,
        )

    def __enter__(self) -> Fake:
        for stub in (self.sm_stub, self.rt_stub, self.s3_stub):
            stub.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stub in (self.sm_stub, self.rt_stub, self.s3_stub):
            stub.deactivate()

    def assert_all_used(self) -> None:
        for stub in (self.sm_stub, self.rt_stub, self.s3_stub):
            stub.assert_no_pending_responses()

    # ---------------------------------------------------------------- canned answers
    def endpoint(self, status: str, config: str | None = OLD_CONFIG, reason: str | None = None):
        response = {
            "EndpointName": ENDPOINT,
            "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{ENDPOINT}",
            "EndpointStatus": status,
            "CreationTime": "2025-01-01T00:00:00Z",
            "LastModifiedTime": "2025-01-01T00:00:00Z",
        }
        if config:
            response["EndpointConfigName"] = config
        if reason:
            response["FailureReason"] = reason
        self.sm_stub.add_response("describe_endpoint", response, {"EndpointName": ENDPOINT})

    def no_endpoint(self) -> None:
        self.sm_stub.add_client_error(
            "describe_endpoint",
            service_error_code="ValidationException",
            service_message=f"Could not find endpoint '{ENDPOINT}'.",
            http_status_code=400,
        )

    def new_model_and_config(self) -> None:
        self.s3_stub.add_response("put_object", {"ETag": '"x"'})
        self.sm_stub.add_response(
            "create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m"}
        )
        self.sm_stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/c"},
        )

    def previous_version(self, version: str = "1") -> None:
        self.sm_stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": OLD_CONFIG,
                "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/c0",
                "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": OLD_MODEL}],
                "CreationTime": "2025-01-01T00:00:00Z",
            },
            {"EndpointConfigName": OLD_CONFIG},
        )
        self.sm_stub.add_response(
            "describe_model",
            {
                "ModelName": OLD_MODEL,
                "ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m0",
                "CreationTime": "2025-01-01T00:00:00Z",
                "PrimaryContainer": {
                    "Image": "img",
                    "Environment": {"GEO_BUSYNESS_MODEL_VERSION": version},
                },
            },
            {"ModelName": OLD_MODEL},
        )

    def update(self, config: Any = None) -> None:
        from botocore.stub import ANY

        self.sm_stub.add_response(
            "update_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e"},
            {"EndpointName": ENDPOINT, "EndpointConfigName": config or ANY},
        )

    def invoke(self, model_version: str) -> None:
        body = json.dumps(
            {
                "predictions": [
                    {"h3_cell": INSTANCES[0]["h3_cell"], "hour_start": "2025-03-01T10:00:00Z"}
                    | {"busyness": 2.0}
                ],
                "model_version": model_version,
            }
        ).encode()
        self.rt_stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"},
        )

    def new_config_name(self) -> str:
        return self.recorder.params("CreateEndpointConfig")[0]["EndpointConfigName"]


def test_update_path_switches_the_endpoint_to_a_new_config_with_data_capture(tmp_path):
    with Fake() as fake:
        fake.endpoint("InService")
        fake.new_model_and_config()
        fake.previous_version("1")
        fake.update()
        fake.endpoint("Updating")
        fake.endpoint("Updating")
        fake.endpoint("InService", config=None)  # filled below once the name is known
        fake.invoke("2")
        # The last describe must name the new config; patch the queued response in place.
        record = _run_with_new_config_name(fake, make_bundle(tmp_path, "2"))
        fake.assert_all_used()

    name = fake.new_config_name()
    assert NAME_PATTERN.match(name) and name.startswith(f"{ENDPOINT}-v2-"), name
    assert fake.recorder.params("UpdateEndpoint") == [
        {"EndpointName": ENDPOINT, "EndpointConfigName": name}
    ]
    assert fake.recorder.params("CreateEndpoint") == []
    config = fake.recorder.params("CreateEndpointConfig")[0]
    assert config["DataCaptureConfig"] == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": "s3://capture/traffic",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    assert config["ProductionVariants"][0]["ModelName"] == name
    model = fake.recorder.params("CreateModel")[0]
    key = f"deployments/{ENDPOINT}/{name}/model.tar.gz"
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://models/{key}"
    assert model["PrimaryContainer"]["Environment"]["GEO_BUSYNESS_MODEL_VERSION"] == "2"
    assert fake.recorder.params("PutObject")[0]["Key"] == key
    invoke = fake.recorder.params("InvokeEndpoint")[0]
    assert json.loads(invoke["Body"]) == {"instances": INSTANCES}
    assert (record.model_version, record.previous_model_version) == ("2", "1")
    assert record.details["previous_endpoint_config_name"] == OLD_CONFIG
    assert fake.sleeps == [5, 5], "polls every poll_delay_seconds while Updating"


def _run_with_new_config_name(fake: Fake, bundle: Path, smoke: SmokeTest | None = None):
    """Run deploy; describe answers queued with config=None get the new config's name.

    The name holds a timestamp and a random part, so the stub fills it in when it is asked."""
    original = fake.sagemaker.meta.events

    def fill_name(http_response: Any = None, parsed: dict | None = None, **_: Any) -> None:
        if (
            parsed is not None
            and parsed.get("EndpointStatus")
            and "EndpointConfigName" not in (parsed)
        ):
            parsed["EndpointConfigName"] = fake.new_config_name()

    original.register("after-call.sagemaker.DescribeEndpoint", fill_name)
    try:
        return fake.target.deploy(bundle, smoke or SmokeTest(INSTANCES))
    finally:
        original.unregister("after-call.sagemaker.DescribeEndpoint", fill_name)


@pytest.mark.parametrize(
    ("settles_as", "reason"),
    [
        ({"status": "Failed", "reason": "image pull failed"}, "Failed: image pull failed"),
        ({"status": "InService", "config": None}, "smoke test failed: model_version is '1'"),
    ],
)
def test_failed_update_is_rolled_back_to_the_previous_config(tmp_path, settles_as, reason):
    with Fake() as fake:
        fake.endpoint("InService")
        fake.new_model_and_config()
        fake.previous_version()
        fake.update()
        fake.endpoint(
            settles_as["status"], config=settles_as.get("config"), reason=settles_as.get("reason")
        )
        if settles_as["status"] == "InService":
            fake.invoke("1")  # the new config answers with the wrong version
        fake.update(OLD_CONFIG)
        fake.endpoint("Updating")
        fake.endpoint("InService", config=OLD_CONFIG)
        with pytest.raises(DeploymentFailed, match=re.escape(reason)) as failure:
            _run_with_new_config_name(fake, make_bundle(tmp_path, "2"))
        fake.assert_all_used()

    assert failure.value.rolled_back
    assert f"rolled back to endpoint config {OLD_CONFIG}" in failure.value.reason
    updates = [p["EndpointConfigName"] for p in fake.recorder.params("UpdateEndpoint")]
    assert updates == [fake.new_config_name(), OLD_CONFIG]


def test_update_rolled_back_by_sagemaker_itself_is_left_alone(tmp_path):
    with Fake() as fake:
        fake.endpoint("InService")
        fake.new_model_and_config()
        fake.previous_version()
        fake.update()
        fake.endpoint("InService", config=OLD_CONFIG, reason="new variant failed health checks")
        with pytest.raises(DeploymentFailed, match="rolled the update back itself") as failure:
            fake.target.deploy(make_bundle(tmp_path, "2"), SmokeTest(INSTANCES))
        fake.assert_all_used()

    assert failure.value.rolled_back
    assert len(fake.recorder.params("UpdateEndpoint")) == 1


def test_timeout_with_a_refused_rollback_says_the_old_model_is_not_back(tmp_path):
    with Fake(wait_timeout_seconds=0) as fake:
        fake.endpoint("InService")
        fake.new_model_and_config()
        fake.previous_version()
        fake.update()
        fake.endpoint("Updating")
        fake.sm_stub.add_client_error(
            "update_endpoint",
            service_error_code="ValidationException",
            service_message="Cannot update in-progress endpoint",
        )
        with pytest.raises(
            DeploymentFailed, match="rollback of hex-busyness failed too"
        ) as failure:
            fake.target.deploy(make_bundle(tmp_path, "2"), SmokeTest(INSTANCES))
        fake.assert_all_used()

    assert not failure.value.rolled_back
    assert "not settled after 0s (status Updating)" in failure.value.reason


def test_busy_endpoint_is_not_touched(tmp_path):
    with Fake() as fake:
        fake.endpoint("Updating")
        with pytest.raises(DeploymentFailed, match="is Updating; another deployment"):
            fake.target.deploy(make_bundle(tmp_path, "2"), SmokeTest(INSTANCES))
        fake.assert_all_used()
    assert [name for name, _ in fake.recorder.calls] == ["DescribeEndpoint"]


def test_create_path_creates_the_endpoint_and_records_no_previous_version(tmp_path):
    with Fake() as fake:
        fake.no_endpoint()
        fake.new_model_and_config()
        fake.sm_stub.add_response(
            "create_endpoint",
            {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e"},
        )
        fake.endpoint("Creating", config=None)
        fake.endpoint("InService", config=None)
        fake.invoke("2")
        record = _run_with_new_config_name(fake, make_bundle(tmp_path, "2"))
        fake.assert_all_used()

    assert fake.recorder.params("CreateEndpoint") == [
        {"EndpointName": ENDPOINT, "EndpointConfigName": fake.new_config_name()}
    ]
    assert record.previous_model_version is None
    assert record.details["previous_endpoint_config_name"] is None


def test_every_deployment_gets_new_valid_names_even_for_the_same_version():
    names = {resource_name(ENDPOINT, "2", "20250101T000000", nonce) for nonce in ("a1b2", "c3d4")}
    assert len(names) == 2
    long_name = resource_name("e" * 63, "sha-" + "f" * 60, "20250101T000000", "a1b2")
    assert len(long_name) <= NAME_MAX and NAME_PATTERN.match(long_name), long_name
    assert NAME_PATTERN.match(resource_name(ENDPOINT, "1.2.3+local", "20250101T000000", "a1b2"))


def test_config_rejects_an_invalid_endpoint_name():
    with pytest.raises(ValueError, match="endpoint_name"):
        SageMakerConfig(endpoint_name="bad_name", role_arn="r", image_uri="i", model_bucket="b")


def test_model_archive_has_the_bundle_at_its_root_and_is_reproducible(tmp_path):
    bundle = make_bundle(tmp_path, "3")
    (bundle / "extra").mkdir()
    (bundle / "extra" / "notes.txt").write_text("n")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    package_bundle(bundle, first)
    (bundle / "model.ubj").touch()  # a newer mtime must not change the archive
    package_bundle(bundle, second)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames() == ["extra/notes.txt", "manifest.json", "model.ubj"]
