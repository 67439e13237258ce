"""Credentials never leave in a URL: the redaction helpers, the MLflow tracking resource's
metadata and errors, and ``geo-busyness rollback``'s error message."""

from __future__ import annotations

import pytest

from geo_busyness.core.redact import (
    MASK,
    redact_data,
    redact_exception,
    redact_text,
    redact_url,
)
from geo_busyness.stack.services import free_port

pytestmark = pytest.mark.unit

PASSWORD = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://alice:{PASSWORD}@mlflow:5000", f"http://alice:{MASK}@mlflow:5000"),
        (f"https://alice:{PASSWORD}@mlflow.example/", f"https://alice:{MASK}@mlflow.example/"),
        # Any scheme: MLflow also takes database URIs.
        (
            "postgresql+psycopg2://mlflow:p%40ss%2Fw0rd@db:5432/mlflow",
            f"postgresql+psycopg2://mlflow:{MASK}@db:5432/mlflow",
        ),
        # An unencoded "@" in the password: the host is after the last one, as for urllib.
        ("http://alice:p@ss@host:5000/api", f"http://alice:{MASK}@host:5000/api"),
        # A path, query and fragment around it are kept as they are.
        (
            f"http://alice:{PASSWORD}@h:5000/#/experiments/1/runs/abc",
            f"http://alice:{MASK}@h:5000/#/experiments/1/runs/abc",
        ),
        # Presigned S3 URL: credential, signature and session token go, the rest stays.
        (
            "https://b.s3.amazonaws.com/k.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE%2F20261201%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20261201T000000Z&X-Amz-Expires=600&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-Signature=0123abcd",
            "https://b.s3.amazonaws.com/k.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={MASK}&X-Amz-Date=20261201T000000Z&X-Amz-Expires=600"
            f"&X-Amz-SignedHeaders=host&X-Amz-Security-Token={MASK}&X-Amz-Signature={MASK}",
        ),
        # Azure SAS and the usual API-style parameters; key names are case-insensitive.
        (
            "https://a.blob.core.windows.net/c/b?sv=2024-01-01&se=2026-12-02&sig=AbC%3D",
            f"https://a.blob.core.windows.net/c/b?sv=2024-01-01&se=2026-12-02&sig={MASK}",
        ),
        (
            "http://h/api?name=x&token=t1&access_token=t2&API-Key=k&Password=p&client_secret=c",
            f"http://h/api?name=x&token={MASK}&access_token={MASK}&API-Key={MASK}"
            f"&Password={MASK}&client_secret={MASK}",
        ),
        (f"http://h/#/runs?secret={PASSWORD}", f"http://h/#/runs?secret={MASK}"),
    ],
)
def test_redact_url_masks_passwords_and_secret_parameters(url, expected):
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # idempotent


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000",
        "http://alice@mlflow:5000/",  # a user name alone is not a secret
        "sqlite:////data/mlflow/mlflow.db",
        "file:///data/reports/drift/2026-11-30.html",
        "s3://bucket/assets/busyness_features/2026-11-30.parquet",
        "models:/geo_busyness_hex_busyness@champion",
        "http://h/api?name=x&alias=champion&monkey=1&keys=2",
        "arn:aws:sagemaker:us-east-1:123456789012:endpoint/geo-busyness",
        "",
    ],
)
def test_redact_url_keeps_urls_without_secrets(url):
    assert redact_url(url) == url


def test_redact_text_masks_every_url_in_a_message():
    message = (
        f"API request to http://alice:{PASSWORD}@127.0.0.1:5000/api/2.0/mlflow/runs/get failed "
        "with exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded "
        f"with url: /api/2.0/mlflow/runs/get?run_id=abc&token={PASSWORD} (Caused by ...); "
        f"artifacts at 'https://bob:{PASSWORD}x@store.example/a?sig={PASSWORD}y'"
    )
    redacted = redact_text(message)
    assert PASSWORD not in redacted
    assert redacted == (
        f"API request to http://alice:{MASK}@127.0.0.1:5000/api/2.0/mlflow/runs/get failed "
        "with exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded "
        f"with url: /api/2.0/mlflow/runs/get?run_id=abc&token={MASK} (Caused by ...); "
        f"artifacts at 'https://bob:{MASK}@store.example/a?sig={MASK}'"
    )
    assert redact_text("nothing to hide: 3 of 4 files, ratio=0.5") == (
        "nothing to hide: 3 of 4 files, ratio=0.5"
    )


def test_redact_data_masks_every_string_of_structured_details():
    details = {
        "endpoint": "geo-busyness",
        "model_data_url": "s3://models/geo-busyness/v3/model.tar.gz",
        "urls": [f"https://h/x?X-Amz-Signature={PASSWORD}", 3],
        "nested": {"tracking": f"http://alice:{PASSWORD}@mlflow:5000", "ok": True},
    }
    redacted = redact_data(details)
    assert PASSWORD not in repr(redacted)
    assert redacted["model_data_url"] == details["model_data_url"]
    assert redacted["urls"] == [f"https://h/x?X-Amz-Signature={MASK}", 3]
    assert redacted["nested"] == {"tracking": f"http://alice:{MASK}@mlflow:5000", "ok": True}


def test_redact_exception_rewrites_the_message_and_its_causes_in_place():
    class ServiceError(Exception):
        def __init__(self, message: str):
            super().__init__(message)
            self.message = message

    try:
        try:
            raise ConnectionError(f"cannot reach http://alice:{PASSWORD}@h:1/")
        except ConnectionError as cause:
            raise ServiceError(f"API request to http://alice:{PASSWORD}@h:1/api failed") from cause
    except ServiceError as error:
        assert redact_exception(error) is error
        assert PASSWORD not in str(error) and PASSWORD not in error.message
        assert f"alice:{MASK}@h:1/api" in str(error)
        assert PASSWORD not in str(error.__cause__)


# -- the MLflow tracking resource ---------------------------------------------------------------


@pytest.fixture
def unreachable_tracking_uri(monkeypatch) -> str:
    """A tracking server URI with a password, on a loopback port nothing listens on; MLflow
    gives up at once instead of retrying for minutes."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"


def _texts(error: BaseException) -> str:
    """The message of ``error`` and of every exception it was raised from or during."""
    seen, texts = set(), []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


def test_run_metadata_carries_no_password(monkeypatch):
    from geo_busyness.resources.tracking import MlflowTracking

    monkeypatch.setattr(MlflowTracking, "experiment_id", lambda self: "7")
    for tracking in (
        MlflowTracking(tracking_uri=f"http://alice:{PASSWORD}@mlflow:5000"),
        MlflowTracking(
            tracking_uri=f"postgresql://mlflow:{PASSWORD}@db/mlflow",
            ui_url=f"https://alice:{PASSWORD}@mlflow.example/?token={PASSWORD}",
        ),
    ):
        metadata = tracking.run_metadata("abc")
        assert all(PASSWORD not in str(value.value) for value in metadata.values()), metadata
    assert metadata["mlflow_tracking_uri"].value == f"postgresql://mlflow:{MASK}@db/mlflow"
    assert metadata["mlflow_run"].value.startswith(f"https://alice:{MASK}@mlflow.example/")
    plain = MlflowTracking(tracking_uri=f"http://alice:{PASSWORD}@mlflow:5000").run_metadata("r1")
    assert plain["mlflow_tracking_uri"].value == f"http://alice:{MASK}@mlflow:5000"
    assert plain["mlflow_run"].value == f"http://alice:{MASK}@mlflow:5000/#/experiments/7/runs/r1"


def test_the_champion_links_to_its_registry_version_without_a_password():
    from geo_busyness.resources.tracking import MlflowTracking

    tracking = MlflowTracking(tracking_uri=f"http://alice:{PASSWORD}@mlflow:5000").for_city("a b")
    assert tracking.model_version_url("3") == (
        f"http://alice:{MASK}@mlflow:5000/#/models/geo_busyness_hex_busyness-a%20b/versions/3"
    )
    local = MlflowTracking(tracking_uri="sqlite:////tmp/m.db", ui_url="http://127.0.0.1:5101/")
    assert local.model_version_url("1") == (
        "http://127.0.0.1:5101/#/models/geo_busyness_hex_busyness/versions/1"
    )


def test_tracking_errors_carry_no_password(unreachable_tracking_uri):
    from geo_busyness.resources.tracking import MlflowTracking

    tracking = MlflowTracking(tracking_uri=unreachable_tracking_uri)
    for call in (
        tracking.champion,
        tracking.experiment_id,
        lambda: tracking.client().get_run("0123456789abcdef"),
    ):
        with pytest.raises(Exception) as raised:
            call()
        texts = _texts(raised.value)
        assert "127.0.0.1" in texts  # the error still says where
        assert PASSWORD not in texts


def test_rollback_error_message_carries_no_password(unreachable_tracking_uri, monkeypatch, capsys):
    from geo_busyness.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", unreachable_tracking_uri)
    code = main(["rollback"])
    captured = capsys.readouterr()
    assert code == 1
    assert PASSWORD not in captured.out + captured.err
    assert f"alice:{MASK}@127.0.0.1" in captured.err


def test_an_unexpected_cli_error_prints_its_traceback_redacted(monkeypatch, capsys):
    from geo_busyness import cli

    def broken(args):
        raise RuntimeError(f"cannot reach https://alice:{PASSWORD}@mlflow.example/?token=t0k3n")

    monkeypatch.setattr(cli, "cmd_rollback", broken)
    assert cli.main(["rollback"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError" in err
    assert f"https://alice:{MASK}@mlflow.example/?token={MASK}" in err
    assert PASSWORD not in err and "t0k3n" not in err
