"""Multi-city bundles: writing, loading, routing each instance to its city's model, responses,
and what deployment reads from them. The app is driven in process as in ``test_serving``."""

from __future__ import annotations

import dataclasses
import json
import tarfile

import h3
import numpy as np
import pandas as pd
import pytest

from geo_busyness.core.model import predict_orders
from geo_busyness.deploy import BundleManifest, SmokeTest
from geo_busyness.deploy.common import city_label as deploy_city_label
from geo_busyness.serving.app import create_app
from geo_busyness.serving.bundle import (
    CITIES_FILE,
    CityMember,
    LoadedBundle,
    MultiCityBundle,
    city_label,
    load_bundle,
    tar_bundle,
    write_bundle,
    write_city_bundle,
)
from geo_busyness.serving.demo import DEMO_HORIZON_START, demo_city_members
from geo_busyness.serving.inference import forecast
from geo_busyness.serving.requests import RequestLimits, parse_json
from geo_busyness_tests.unit.test_serving import call, post_json

pytestmark = pytest.mark.unit

HOURS = 6
LABEL = "regina=3,saskatoon=12"


@pytest.fixture(scope="module")
def members() -> dict[str, CityMember]:
    return demo_city_members(rings=1, hours=HOURS, n_estimators=30)


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory, members):
    return write_city_bundle(tmp_path_factory.mktemp("cities") / "bundle", members)


@pytest.fixture(scope="module")
def loaded(city_dir) -> MultiCityBundle:
    bundle = load_bundle(city_dir)
    assert isinstance(bundle, MultiCityBundle)
    return bundle


@pytest.fixture(scope="module")
def app(loaded):
    return create_app(loaded, RequestLimits(max_body_bytes=200_000, max_instances=1_000))


def offline(members, city: str, rows: pd.DataFrame) -> np.ndarray:
    member = members[city]
    return predict_orders(member.model, rows, member.manifest.feature_names)


def mixed_request(members) -> tuple[list[dict], list[str], np.ndarray]:
    """Cells of both cities and a coordinate in each, interleaved: (instances, city, expected)."""
    instances, cities, expected = [], [], []
    for city, member in members.items():
        rows = member.features.iloc[::5].reset_index(drop=True)
        predicted = offline(members, city, rows)
        for i, (cell, hour) in enumerate(zip(rows["h3_cell"], rows["hour_start"], strict=True)):
            if i % 3 == 0:  # the cell's centre converts back to the cell at its resolution
                lat, lon = h3.cell_to_latlng(cell)
                instances.append({"lat": lat, "lon": lon, "timestamp": hour.isoformat()})
            else:
                instances.append({"h3_cell": cell, "timestamp": hour.isoformat()})
            cities.append(city)
            expected.append(predicted[i])
    order = np.random.default_rng(0).permutation(len(instances))
    return (
        [instances[i] for i in order],
        [cities[i] for i in order],
        np.asarray(expected, dtype="float32")[order],
    )


# ---------------------------------------------------------------------------------------------
# Writing and loading


def test_a_city_bundle_round_trip(city_dir, loaded, members):
    assert sorted(p.name for p in city_dir.iterdir()) == ["cities", CITIES_FILE]
    assert not [p for p in city_dir.parent.iterdir() if p.name.startswith(".")]  # no staging
    document = json.loads((city_dir / CITIES_FILE).read_text())
    assert [(m["city"], m["path"], m["h3_resolution"]) for m in document["members"]] == [
        ("regina", "cities/regina", 7),
        ("saskatoon", "cities/saskatoon", 8),
    ]
    assert loaded.cities == ("regina", "saskatoon")
    assert loaded.resolutions == (7, 8)
    assert loaded.model_versions == {"regina": "3", "saskatoon": "12"}
    assert loaded.model_version == LABEL == deploy_city_label(loaded.model_versions)
    assert loaded.model_name == "regina=busyness-regina,saskatoon=busyness-saskatoon"
    for city, member in loaded.members.items():
        assert member.manifest == members[city].manifest
        assert len(member.index) == len(members[city].features)
        # each member is an ordinary bundle
        single = load_bundle(city_dir / "cities" / city)
        assert isinstance(single, LoadedBundle) and single.manifest == member.manifest


def test_labels_are_in_city_order_whatever_the_member_order():
    assert city_label({"saskatoon": "12", "regina": "3"}) == LABEL


def test_tar_keeps_the_city_folders(tmp_path, city_dir):
    archive = tar_bundle(city_dir, tmp_path / "model.tar.gz")
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    assert names == sorted(
        [CITIES_FILE]
        + [
            f"cities/{c}/{f}"
            for c in ("regina", "saskatoon")
            for f in ("features.parquet", "manifest.json", "model.ubj")
        ]
    )
    assert load_bundle(tmp_path / "opt-ml-model").model_version == LABEL


def test_a_city_bundle_replaces_a_single_one_atomically(tmp_path, members, monkeypatch):
    regina = members["regina"]
    target = write_bundle(tmp_path / "b", *regina)
    write_city_bundle(target, members)
    assert load_bundle(target).model_version == LABEL

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_city_bundle(target, {"regina": regina})
    assert load_bundle(target).model_version == LABEL
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_write_city_bundle_refuses_bad_members(tmp_path, members):
    regina = members["regina"]
    with pytest.raises(ValueError, match="at least one city"):
        write_city_bundle(tmp_path / "b", {})
    with pytest.raises(ValueError, match="lowercase slug"):
        write_city_bundle(tmp_path / "b", {"Regina SK": regina})
    late = regina.features.copy()
    late["hour_start"] = late["hour_start"] + pd.Timedelta(days=1)
    with pytest.raises(ValueError, match=r"city regina: .*outside the horizon"):
        write_city_bundle(tmp_path / "b", {"regina": (regina.model, late, regina.manifest)})
    # Same resolution, shared hexagons: a cell would not say which model answers it.
    with pytest.raises(ValueError, match=r"regina and regina-2 share .* at resolution 7"):
        write_city_bundle(tmp_path / "b", {"regina": regina, "regina-2": regina})
    assert not tmp_path.joinpath("b").exists()


def test_load_refuses_a_listing_that_disagrees_with_the_members(tmp_path, members):
    target = write_city_bundle(tmp_path / "b", members)
    document = json.loads((target / CITIES_FILE).read_text())
    document["members"][1]["model_version"] = "13"
    (target / CITIES_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="lists saskatoon as"):
        load_bundle(target)
    document["members"][1]["path"] = "../elsewhere"
    (target / CITIES_FILE).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="must live in cities/saskatoon"):
        load_bundle(target)
    (target / "cities" / "regina" / "model.ubj").unlink()
    document["members"][1]["path"] = "cities/saskatoon"
    (target / CITIES_FILE).write_text(json.dumps(document))
    with pytest.raises(FileNotFoundError, match=r"city regina: .*model\.ubj"):
        load_bundle(target)


# ---------------------------------------------------------------------------------------------
# Routing and responses


def test_one_request_answers_both_cities_by_cell_and_coordinate(app, members):
    instances, cities, expected = mixed_request(members)
    assert {"lat" in i for i in instances} == {True, False}
    status, headers, body = post_json(app, {"instances": instances})
    assert status == 200, body
    assert headers["x-model-version"] == LABEL
    answer = json.loads(body)
    assert answer["model_version"] == LABEL
    assert answer["model_versions"] == {"regina": "3", "saskatoon": "12"}
    assert answer["model_names"] == {"regina": "busyness-regina", "saskatoon": "busyness-saskatoon"}
    predictions = pd.DataFrame(answer["predictions"])
    assert list(predictions.columns) == [
        "h3_cell",
        "hour_start",
        "busyness",
        "city",
        "model_version",
    ]
    assert predictions["city"].tolist() == cities
    versions = {"regina": "3", "saskatoon": "12"}
    assert predictions["model_version"].tolist() == [versions[c] for c in cities]
    np.testing.assert_array_equal(predictions["busyness"].to_numpy().astype("float32"), expected)
    # each city's cells at its own resolution
    levels = {
        h3.get_resolution(c) for c in predictions.loc[predictions.city == "saskatoon"].h3_cell
    }
    assert levels == {8}


def test_each_city_explains_its_predictions_with_its_own_features(app, members):
    instances, cities, _ = mixed_request(members)
    status, _, body = post_json(app, {"instances": instances, "explain": True})
    assert status == 200, body
    for prediction, city in zip(json.loads(body)["predictions"], cities, strict=True):
        names = members[city].manifest.feature_names
        assert prediction["city"] == city
        assert list(prediction["contributions"]) == [*names, "bias"]
        total = sum(prediction["contributions"].values())
        assert np.log(prediction["busyness"]) == pytest.approx(total, abs=1e-3)


def test_csv_adds_city_and_model_version_columns(app, members):
    instances, cities, expected = mixed_request(members)
    cell_rows = [(i, c) for i, c in zip(instances, cities, strict=True) if "h3_cell" in i]
    text = "h3_cell,timestamp\n" + "".join(
        f"{i['h3_cell']},{i['timestamp']}\n" for i, _ in cell_rows
    )
    status, _, body = call(
        app,
        "POST",
        "/invocations",
        text.encode(),
        {"content-type": "text/csv", "accept": "text/csv"},
    )
    assert status == 200, body
    lines = body.decode().splitlines()
    assert lines[0] == "h3_cell,hour_start,busyness,city,model_version"
    table = pd.DataFrame([line.split(",") for line in lines[1:]], columns=lines[0].split(","))
    assert table["city"].tolist() == [c for _, c in cell_rows]
    assert set(zip(table["city"], table["model_version"], strict=True)) == {
        ("regina", "3"),
        ("saskatoon", "12"),
    }
    wanted = expected[[k for k, i in enumerate(instances) if "h3_cell" in i]]
    np.testing.assert_array_equal(table["busyness"].astype("float32").to_numpy(), wanted)


def test_ping_names_every_city(app):
    status, _, body = call(app, "GET", "/ping")
    answer = json.loads(body)
    assert status == 200
    assert answer["model_version"] == LABEL
    assert answer["model_versions"] == {"regina": "3", "saskatoon": "12"}


def test_what_no_city_holds_is_a_422_naming_the_field(app, members):
    start = DEMO_HORIZON_START.isoformat()
    known = members["regina"].features["h3_cell"].iloc[0]
    far_away = h3.latlng_to_cell(45.0, -75.0, 8)
    cases = [
        ({"h3_cell": far_away, "timestamp": start}, "h3_cell", "not an active hexagon of any"),
        ({"lat": 45.0, "lon": -75.0, "timestamp": start}, "lat", "lies in no active hexagon"),
        (
            {
                "h3_cell": known,
                "timestamp": (DEMO_HORIZON_START + pd.Timedelta(days=1)).isoformat(),
            },
            "timestamp",
            "in regina: 2025-03-04T00:00:00+00:00 is outside the snapshot's horizon",
        ),
    ]
    for instance, field, message in cases:
        status, _, body = post_json(
            app, {"instances": [{"h3_cell": known, "timestamp": start}, instance, instance]}
        )
        error = json.loads(body)["error"]
        assert status == 422, body
        assert (error["field"], error["instance"]) == (field, 1)
        assert message in error["message"] and "(and 1 more instances)" in error["message"]

    status, _, body = post_json(
        app, {"instances": [{"h3_cell": h3.latlng_to_cell(50.45, -104.6, 9), "timestamp": start}]}
    )
    assert status == 400
    assert "this endpoint forecasts resolution 7 or 8 cells" in json.loads(body)["error"]["message"]


def test_two_cities_at_one_resolution_each_answer_their_cells(tmp_path, members):
    """Regina's snapshot split in two members at resolution 7: each cell goes to its owner."""
    regina = members["regina"]
    cells = sorted(regina.features["h3_cell"].unique())
    east = regina.features["h3_cell"].isin(cells[::2])
    split = {
        "regina-a": CityMember(regina.model, regina.features[east], regina.manifest),
        "regina-b": CityMember(
            members["saskatoon"].model,  # another model, so a wrong route would show
            regina.features[~east],
            dataclasses.replace(regina.manifest, model_version="7"),
        ),
    }
    bundle = load_bundle(write_city_bundle(tmp_path / "b", split))
    rows = regina.features.reset_index(drop=True)
    parsed = parse_json(
        json.dumps(
            {
                "instances": [
                    {"h3_cell": c, "timestamp": h.isoformat()}
                    for c, h in zip(rows["h3_cell"], rows["hour_start"], strict=True)
                ]
            }
        ).encode(),
        bundle.resolutions,
        10_000,
    )
    result = forecast(bundle, parsed)
    owner = np.where(rows["h3_cell"].isin(cells[::2]), "regina-a", "regina-b")
    assert result.cities.to_pylist() == owner.tolist()
    expected = np.where(
        owner == "regina-a",
        predict_orders(regina.model, rows, regina.manifest.feature_names),
        predict_orders(members["saskatoon"].model, rows, regina.manifest.feature_names),
    )
    np.testing.assert_array_equal(result.busyness, expected.astype("float32"))


# ---------------------------------------------------------------------------------------------
# What deployment reads


def test_deployment_reads_every_member(city_dir):
    manifest = BundleManifest.read(city_dir)
    assert (manifest.model_name, manifest.model_version) == (
        "regina=busyness-regina,saskatoon=busyness-saskatoon",
        LABEL,
    )
    assert manifest.members == {
        "regina": {"model_name": "busyness-regina", "model_version": "3"},
        "saskatoon": {"model_name": "busyness-saskatoon", "model_version": "12"},
    }


def test_the_smoke_check_compares_each_predictions_version(app, city_dir, members):
    instances, _, expected = mixed_request(members)
    _, _, body = post_json(app, {"instances": instances})
    answer = json.loads(body)
    rows = [
        {**p, "busyness": float(want)}
        for p, want in zip(answer["predictions"], expected, strict=True)
    ]
    smoke = SmokeTest(instances=instances, expected_predictions=rows).for_bundle(
        BundleManifest.read(city_dir)
    )
    assert smoke.expected_model_version == LABEL
    assert smoke.expected_city_versions == {"regina": "3", "saskatoon": "12"}
    assert smoke.problems(body) == []

    # a prediction from another version of its city's model fails, with or without rows
    stale = json.loads(body)
    stale["predictions"][0]["model_version"] = "2"
    assert any("expected '" in p for p in smoke.problems(json.dumps(stale)))
    bare = SmokeTest(instances=instances).for_bundle(BundleManifest.read(city_dir))
    assert len(bare.problems(json.dumps(stale))) == 1
    # an expected row naming another version or city fails too
    wrong = [{**rows[0], "model_version": "99", "city": "elsewhere"}]
    problems = SmokeTest(instances=instances, expected_predictions=wrong).problems(body)
    assert len(problems) == 2 and "model_version" in problems[1] and "city" in problems[0]
