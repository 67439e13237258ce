"""The smoke check and bundle manifest every deployment target relies on."""

from __future__ import annotations

import json

import pytest

from geo_busyness.deploy import BundleManifest, DeploymentFailed, SmokeTest

pytestmark = pytest.mark.unit

CELL = "8928308280fffff"
INSTANCES = [{"h3_cell": CELL, "timestamp": "2025-03-01T10:15:00Z"}]


def answer(version="2", busyness=1.5, hour="2025-03-01T10:00:00+00:00", **extra) -> bytes:
    prediction = {"h3_cell": CELL, "hour_start": hour, "busyness": busyness}
    return json.dumps({"predictions": [prediction], "model_version": version, **extra}).encode()


def test_smoke_passes_on_the_expected_version_and_predictions_in_any_utc_spelling():
    smoke = SmokeTest(
        INSTANCES,
        expected_predictions=[
            {"h3_cell": CELL, "hour_start": "2025-03-01T10:00:00Z", "busyness": 1.5}
        ],
    ).for_version("2")
    assert smoke.problems(answer()) == []
    assert smoke.problems(answer(hour="2025-03-01T11:00:00+01:00")) == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (answer(version="1"), "model_version is '1', expected '2'"),
        (answer(busyness=1.6), "busyness for 8928308280fffff at 2025-03-01T10:00:00+00:00 is 1.6"),
        (answer(hour="2025-03-01T09:00:00Z"), "no prediction for 8928308280fffff"),
        (b"body", "response is not JSON: body"),
        (json.dumps({"model_version": "2"}).encode(), "no predictions in the response"),
        (b"[]", "not a JSON object"),
    ],
)
def test_smoke_names_what_is_wrong(body, problem):
    smoke = SmokeTest(
        INSTANCES,
        expected_model_version="2",
        expected_predictions=[
            {"h3_cell": CELL, "hour_start": "2025-03-01T10:00:00Z", "busyness": 1.5}
        ],
    )
    problems = smoke.problems(body)
    assert any(problem in p for p in problems), problems


def test_smoke_without_expected_predictions_checks_version_and_shape_only():
    smoke = SmokeTest(INSTANCES).for_version("7")
    assert smoke.problems(answer(version="7", busyness=99.0)) == []
    assert smoke.problems(answer(version=7)) == [], "a numeric version in JSON still matches"
    assert (
        SmokeTest(INSTANCES, expected_model_version="x").for_version("7").expected_model_version
        == "x"
    )
    assert json.loads(smoke.request_body()) == {"instances": INSTANCES}


def test_smoke_needs_an_instance():
    with pytest.raises(ValueError, match="at least one instance"):
        SmokeTest([])


def test_manifest_is_read_and_bad_bundles_fail_before_anything_starts(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"model_name": "m", "model_version": 3}))
    manifest = BundleManifest.read(tmp_path)
    assert (manifest.model_name, manifest.model_version, manifest.bundle_dir) == (
        "m",
        "3",
        tmp_path,
    )

    with pytest.raises(DeploymentFailed, match="does not exist"):
        BundleManifest.read(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DeploymentFailed, match=r"has no manifest\.json"):
        BundleManifest.read(empty)
    (empty / "manifest.json").write_text(json.dumps({"model_name": "m"}))
    with pytest.raises(DeploymentFailed, match="lacks model_version"):
        BundleManifest.read(empty)
    (empty / "manifest.json").write_text("{not json")
    with pytest.raises(DeploymentFailed, match="cannot read"):
        BundleManifest.read(empty)
