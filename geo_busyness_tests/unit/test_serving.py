"""The inference server's pure parts and its ASGI app, in process.

The app is driven through the ASGI interface directly (a small helper below), so these tests
exercise routing, status codes and bodies exactly as uvicorn would call them, without a socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tarfile
import threading
import time

import h3
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo_busyness.core.features import HOUR_NS
from geo_busyness.core.model import predict_orders
from geo_busyness.serving import bundle as bundle_module
from geo_busyness.serving.app import INFERENCE_ID_HEADER, Capacity, create_app
from geo_busyness.serving.bundle import (
    BUNDLE_FILES,
    Manifest,
    load_bundle,
    tar_bundle,
    write_bundle,
)
from geo_busyness.serving.demo import (
    DEMO_HORIZON_START,
    demo_features,
    demo_model,
    write_demo_bundle,
)
from geo_busyness.serving.requests import (
    RequestError,
    RequestLimits,
    _json_structure,
    parse_csv,
    parse_json,
    parse_request,
)
from geo_busyness.serving.responses import negotiate

pytestmark = pytest.mark.unit

RESOLUTION = 7
HORIZON_END = DEMO_HORIZON_START + pd.Timedelta(hours=24)


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def model():
    return demo_model()


@pytest.fixture(scope="module")
def features():
    return demo_features()


def make_manifest(features_frame: pd.DataFrame, **changes) -> Manifest:
    names = [c for c in features_frame.columns if c not in ("h3_cell", "hour_start", "orders")]
    fields = {
        "model_name": "busyness",
        "model_version": "3",
        "mlflow_run_id": "abc123",
        "feature_names": names,
        "h3_resolution": RESOLUTION,
        "horizon_start": DEMO_HORIZON_START.isoformat(),
        "horizon_end": HORIZON_END.isoformat(),
    }
    return Manifest(**{**fields, **changes})


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, model, features):
    directory = tmp_path_factory.mktemp("bundle") / "bundle"
    return write_bundle(directory, model, features, make_manifest(features))


@pytest.fixture(scope="module")
def loaded(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def app(loaded):
    return create_app(loaded, RequestLimits(max_body_bytes=200_000, max_instances=1_000))


def call(app, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request through the ASGI app: ``(status, headers, body)``."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a client that never disconnects

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], response_headers, content


def post_json(app, document, headers: dict | None = None):
    return call(
        app,
        "POST",
        "/invocations",
        json.dumps(document).encode(),
        {"content-type": "application/json", **(headers or {})},
    )


def instance_json(cells, hours) -> dict:
    return {
        "instances": [
            {"h3_cell": c, "timestamp": pd.Timestamp(h).isoformat()}
            for c, h in zip(cells, hours, strict=True)
        ]
    }


def expected_predictions(model, frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The offline path: what the training code's ``XGBRegressor.predict`` says."""
    return predict_orders(model, frame, names)


# ---------------------------------------------------------------------------------------------
# Bundle


def test_bundle_round_trip(bundle_dir, loaded, features, model):
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(BUNDLE_FILES)
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no staging
    manifest = make_manifest(features)
    assert loaded.manifest.feature_names == manifest.feature_names
    assert loaded.manifest.model_version == "3"
    assert loaded.manifest.horizon == (DEMO_HORIZON_START, HORIZON_END)
    assert Manifest.from_json((bundle_dir / "manifest.json").read_text()) == loaded.manifest
    assert len(loaded.index) == len(features)
    assert loaded.booster.feature_names == manifest.feature_names

    snapshot = pd.read_parquet(bundle_dir / "features.parquet")
    assert list(snapshot.columns) == ["h3_cell", "hour_start", *manifest.feature_names]
    assert str(snapshot["hour_start"].dt.tz) == "UTC"
    hour_ns = snapshot["hour_start"].dt.as_unit("ns").astype("int64").to_numpy()
    from geo_busyness.core.geo import strings_to_cells

    rows = loaded.index.rows(strings_to_cells(snapshot["h3_cell"].to_numpy(object)), hour_ns)
    assert (rows >= 0).all() and len(set(rows.tolist())) == len(rows)
    np.testing.assert_array_equal(
        loaded.index.features[rows],
        snapshot[manifest.feature_names].to_numpy("float32"),
    )
    np.testing.assert_array_equal(
        loaded.predict_rows(rows), expected_predictions(model, snapshot, manifest.feature_names)
    )


def test_an_early_stopped_model_predicts_with_its_best_iteration(loaded, model):
    # The parity tests below only mean something if the extra trees change predictions.
    assert model.best_iteration + 1 < loaded.booster.num_boosted_rounds()
    assert loaded.iteration_range == (0, model.best_iteration + 1)
    matrix = loaded.index.features[:50]
    every_tree = loaded.booster.inplace_predict(matrix)
    assert not np.array_equal(every_tree, loaded.predict_rows(np.arange(50)))


def test_write_bundle_replaces_a_bundle_and_refuses_other_directories(tmp_path, model, features):
    target = tmp_path / "bundle"
    write_bundle(target, model, features, make_manifest(features, model_version="1"))
    write_bundle(target, model, features, make_manifest(features, model_version="2"))
    assert load_bundle(target).manifest.model_version == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bundle"):
        write_bundle(precious, model, features, make_manifest(features))
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_failed_write_leaves_the_previous_bundle(tmp_path, model, features, monkeypatch):
    target = write_bundle(tmp_path / "b", model, features, make_manifest(features))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(target, model, features, make_manifest(features, model_version="9"))
    assert load_bundle(target).manifest.model_version == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def _with_row(frame: pd.DataFrame, **values) -> pd.DataFrame:
    row = frame.iloc[[0]].copy()
    for name, value in values.items():
        row[name] = value
    return pd.concat([frame, row], ignore_index=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["orders_lag_24h"]), r"lacks columns \['orders_lag_24h'\]"),
        (lambda f: f.drop(columns=["hour_start"]), r"lacks columns \['hour_start'\]"),
        (lambda f: f.iloc[0:0], "no rows"),
        (lambda f: pd.concat([f, f.iloc[[5]]], ignore_index=True), "duplicate"),
        (
            lambda f: _with_row(f, hour_start=HORIZON_END),
            "1 snapshot rows lie outside the horizon",
        ),
        (
            lambda f: _with_row(f, hour_start=DEMO_HORIZON_START - pd.Timedelta(hours=1)),
            "outside the horizon",
        ),
        (
            lambda f: _with_row(f, hour_start=DEMO_HORIZON_START + pd.Timedelta(minutes=30)),
            "on the hour",
        ),
        (lambda f: f.assign(hour_start=f["hour_start"].dt.tz_localize(None)), "timezone-aware"),
        (lambda f: _with_row(f, h3_cell="not-a-cell"), "not-a-cell"),
        (
            lambda f: _with_row(f, h3_cell=h3.latlng_to_cell(50.45, -104.6, 8)),
            "not at the manifest's resolution 7",
        ),
        (lambda f: f.assign(orders_lag_1h="many"), "numeric"),
    ],
)
def test_write_bundle_refuses_a_bad_snapshot(tmp_path, model, features, change, message):
    with pytest.raises(ValueError, match=message):
        write_bundle(tmp_path / "b", model, change(features.copy()), make_manifest(features))
    assert list(tmp_path.iterdir()) == []


def test_write_bundle_refuses_a_model_fitted_on_other_columns(tmp_path, model, features):
    manifest = make_manifest(features)
    swapped = [manifest.feature_names[1], manifest.feature_names[0], *manifest.feature_names[2:]]
    with pytest.raises(ValueError, match="feature names differ"):
        write_bundle(
            tmp_path / "b", model, features, make_manifest(features, feature_names=swapped)
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"horizon_start": "2025-03-03T00:00:00"}, "must carry a time zone"),
        ({"horizon_end": DEMO_HORIZON_START.isoformat()}, "must be after"),
        ({"horizon_start": "2025-03-03T00:30:00Z"}, "on the hour"),
        ({"h3_resolution": 16}, "0..15"),
        ({"feature_names": ["a", "a"]}, "duplicates"),
        ({"model_name": ""}, "model_name"),
        ({"horizon_start": "yesterday"}, "not a timestamp"),
    ],
)
def test_manifest_validation(features, changes, message):
    with pytest.raises(ValueError, match=message):
        make_manifest(features, **changes)


def test_manifest_normalizes_times_and_versions(features):
    manifest = make_manifest(
        features,
        model_version=7,
        horizon_start=pd.Timestamp("2025-03-02T18:00:00-06:00"),  # Regina's midnight
    )
    assert manifest.model_version == "7"
    assert manifest.horizon_start == "2025-03-03T00:00:00+00:00"
    assert manifest.horizon_hours == 24
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_tar_bundle_puts_the_files_at_the_archive_root(tmp_path, bundle_dir):
    archive = tar_bundle(bundle_dir, tmp_path / "out" / "model.tar.gz")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(BUNDLE_FILES)
        assert {m.uname for m in tar.getmembers()} == {""}
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    reloaded = load_bundle(tmp_path / "opt-ml-model")
    assert reloaded.manifest == load_bundle(bundle_dir).manifest
    with pytest.raises(FileNotFoundError, match="lacks"):
        tar_bundle(tmp_path / "out", tmp_path / "x.tar.gz")


def test_load_bundle_names_missing_files(tmp_path, bundle_dir):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "manifest.json").write_text((bundle_dir / "manifest.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"model\.ubj"):
        load_bundle(partial)


# ---------------------------------------------------------------------------------------------
# Request parsing


def _cells(n: int) -> list[str]:
    return sorted(h3.grid_disk(h3.latlng_to_cell(50.4452, -104.6189, RESOLUTION), 2))[:n]


def test_json_and_csv_parse_to_the_same_keys():
    cells = _cells(3)
    times = ["2025-03-03T10:15:00Z", "2025-03-03T12:00:00+02:00", "2025-03-03T23:59:59.999"]
    document = {
        "instances": [{"h3_cell": c, "timestamp": t} for c, t in zip(cells, times, strict=True)]
    }
    parsed = parse_json(json.dumps(document).encode(), RESOLUTION, 100)
    csv_text = "h3_cell,timestamp\r\n" + "".join(
        f"{c},{t}\r\n" for c, t in zip(cells, times, strict=True)
    )
    from_csv = parse_csv(("\ufeff" + csv_text).encode(), RESOLUTION, 100)

    expected_hours = pd.to_datetime(
        ["2025-03-03T10:00:00Z", "2025-03-03T10:00:00Z", "2025-03-03T23:00:00Z"]
    ).asi8
    for result in (parsed, from_csv):
        assert [h3.int_to_str(int(c)) for c in result.cells] == cells
        np.testing.assert_array_equal(result.hour_ns, expected_hours)
        assert (result.hour_ns % HOUR_NS == 0).all()


@pytest.mark.parametrize(
    ("times", "hours"),
    [
        # all zoned, all zoneless (UTC), and a mix, where each string keeps its own zone
        (["2025-03-03T10:59:59-06:00", "2025-03-03T00:00:00Z"], ["16:00", "00:00"]),
        (["2025-03-03T10:59:59", "2025-03-03 00:00"], ["10:00", "00:00"]),
        (["2025-03-03T10:59:59", "2025-03-03T10:59:59-06:00"], ["10:00", "16:00"]),
    ],
)
def test_timestamps_floor_to_the_utc_hour(times, hours):
    document = {"instances": [{"h3_cell": GOOD_CELL, "timestamp": t} for t in times]}
    parsed = parse_json(json.dumps(document).encode(), RESOLUTION, 10)
    expected = pd.to_datetime([f"2025-03-03T{h}:00Z" for h in hours]).asi8
    np.testing.assert_array_equal(parsed.hour_ns, expected)


def test_coordinates_give_the_cells_h3_gives():
    rng = np.random.default_rng(3)
    lat = rng.uniform(50.3, 50.6, 500)
    lon = rng.uniform(-104.8, -104.4, 500)
    lat[0], lon[0] = 90.0, -180.0  # the edges of the valid range
    lon[1] = 180
    instances = [
        {"lat": float(a), "lon": float(b), "timestamp": "2025-03-03T10:00:00Z"}
        for a, b in zip(lat, lon, strict=True)
    ]
    instances[2]["lat"] = 50  # an integer is a number too
    lat[2] = 50.0
    parsed = parse_json(json.dumps({"instances": instances}).encode(), RESOLUTION, 1000)
    expected = [h3.latlng_to_cell(a, b, RESOLUTION) for a, b in zip(lat, lon, strict=True)]
    assert [h3.int_to_str(int(c)) for c in parsed.cells] == expected

    csv_body = "lat,lon,timestamp\n" + "".join(
        f"{float(a)!r},{float(b)!r},2025-03-03T10:00:00Z\n" for a, b in zip(lat, lon, strict=True)
    )
    from_csv = parse_csv(csv_body.encode(), RESOLUTION, 1000)
    assert [h3.int_to_str(int(c)) for c in from_csv.cells] == expected


def test_a_batch_may_mix_cells_and_coordinates():
    cell = _cells(1)[0]
    lat, lon = h3.cell_to_latlng(cell)
    document = {
        "instances": [
            {"lat": lat, "lon": lon, "timestamp": "2025-03-03T01:00:00Z"},
            {"h3_cell": cell.upper(), "timestamp": "2025-03-03T02:00:00Z", "id": "ignored"},
        ]
    }
    parsed = parse_json(json.dumps(document).encode(), RESOLUTION, 10)
    assert [h3.int_to_str(int(c)) for c in parsed.cells] == [cell, cell]


GOOD_CELL = h3.latlng_to_cell(50.4452, -104.6189, RESOLUTION)
TS = "2025-03-03T10:00:00Z"


@pytest.mark.parametrize(
    ("body", "status", "field", "instance", "message"),
    [
        (b'{"instances": [', 400, "body", None, "malformed JSON"),
        (b"\xff\xfe garbage", 400, "body", None, "malformed JSON"),
        (b"[1, 2]", 400, "body", None, "JSON object like"),
        (b'{"instances": {"a": 1}}', 400, "instances", None, "must be a list"),
        (b'{"instances": []}', 400, "instances", None, "no instances"),
        (
            json.dumps({"instances": [{"h3_cell": GOOD_CELL, "timestamp": TS}, 5]}).encode(),
            400,
            "instances",
            1,
            r"instances\[1\] must be a JSON object",
        ),
        (
            json.dumps({"instances": [{"h3_cell": GOOD_CELL, "timestamp": TS}, None]}).encode(),
            400,
            "instances",
            1,
            r"instances\[1\] must be a JSON object",
        ),
        (
            json.dumps({"instances": [{"h3_cell": GOOD_CELL}]}).encode(),
            400,
            "timestamp",
            0,
            r"instances\[0\]\.timestamp: missing",
        ),
        (
            json.dumps(
                {"instances": [{"h3_cell": GOOD_CELL, "timestamp": TS}, {"timestamp": TS}]}
            ).encode(),
            400,
            "h3_cell",
            1,
            r"instances\[1\]\.h3_cell: missing \(or lat and lon\)",
        ),
        (
            json.dumps(
                {"instances": [{"h3_cell": GOOD_CELL, "lat": 50.4, "lon": -104.6, "timestamp": TS}]}
            ).encode(),
            400,
            "h3_cell",
            0,
            "either h3_cell or lat and lon",
        ),
        (
            json.dumps({"instances": [{"lat": 50.4, "timestamp": TS}]}).encode(),
            400,
            "lon",
            0,
            r"instances\[0\]\.lon: missing",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"lat": 50.4, "lon": -104.6, "timestamp": TS},
                        {"lat": 95.0, "lon": -104.6, "timestamp": TS},
                        {"lat": -91.0, "lon": -104.6, "timestamp": TS},
                    ]
                }
            ).encode(),
            400,
            "lat",
            1,
            r"instances\[1\]\.lat: 95\.0 is outside \[-90, 90\] \(and 1 more instances\)",
        ),
        (
            json.dumps({"instances": [{"lat": 50.4, "lon": 180.5, "timestamp": TS}]}).encode(),
            400,
            "lon",
            0,
            r"180\.5 is outside \[-180, 180\]",
        ),
        (
            b'{"instances": [{"lat": NaN, "lon": 1.0, "timestamp": "2025-03-03T10:00:00Z"}]}',
            400,
            "lat",
            0,
            "nan is outside",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"lat": 50.4, "lon": -104.6, "timestamp": TS},
                        {"lat": "50.4", "lon": -104.6, "timestamp": TS},
                    ]
                }
            ).encode(),
            400,
            "lat",
            1,
            r"instances\[1\]\.lat must be a number, got \"50\.4\"",
        ),
        (
            json.dumps({"instances": [{"lat": True, "lon": -104.6, "timestamp": TS}]}).encode(),
            400,
            "lat",
            0,
            "must be a number, got true",
        ),
        (
            json.dumps({"instances": [{"lat": 10**30, "lon": -104.6, "timestamp": TS}]}).encode(),
            400,
            "lat",
            0,
            "is outside",
        ),
        (
            json.dumps({"instances": [{"h3_cell": 12345, "timestamp": TS}]}).encode(),
            400,
            "h3_cell",
            0,
            "must be a string, got 12345",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"h3_cell": GOOD_CELL, "timestamp": TS},
                        {"h3_cell": "87nothex", "timestamp": TS},
                    ]
                }
            ).encode(),
            400,
            "h3_cell",
            1,
            r"instances\[1\]\.h3_cell: '87nothex' is not a valid H3 cell",
        ),
        (
            json.dumps(
                {"instances": [{"h3_cell": h3.latlng_to_cell(50.4, -104.6, 9), "timestamp": TS}]}
            ).encode(),
            400,
            "h3_cell",
            0,
            "is a resolution 9 cell; this model forecasts resolution 7 cells",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"h3_cell": GOOD_CELL, "timestamp": TS},
                        {"h3_cell": GOOD_CELL, "timestamp": "next tuesday"},
                    ]
                }
            ).encode(),
            400,
            "timestamp",
            1,
            r"instances\[1\]\.timestamp: 'next tuesday' is not an ISO-8601 timestamp",
        ),
        (
            json.dumps({"instances": [{"h3_cell": GOOD_CELL, "timestamp": 1741000000}]}).encode(),
            400,
            "timestamp",
            0,
            "must be a string",
        ),
        (
            json.dumps(
                {"instances": [{"h3_cell": GOOD_CELL, "timestamp": "2025-02-30T10:00:00Z"}]}
            ).encode(),
            400,
            "timestamp",
            0,
            "not an ISO-8601 timestamp",
        ),
    ],
)
def test_json_errors_name_the_field_and_instance(body, status, field, instance, message):
    with pytest.raises(RequestError, match=message) as caught:
        parse_json(body, RESOLUTION, 100)
    assert (caught.value.status, caught.value.field, caught.value.instance) == (
        status,
        field,
        instance,
    )


@pytest.mark.parametrize(
    ("body", "field", "instance", "message"),
    [
        (b"", "body", None, "empty CSV"),
        (b"cell,timestamp\nabc,def\n", "h3_cell", None, r"lacks h3_cell \(or lat and lon\)"),
        (b"lat,timestamp\n1,2\n", "lon", None, "lacks lon"),
        (f"h3_cell\n{GOOD_CELL}\n".encode(), "timestamp", None, "lacks timestamp"),
        (f"h3_cell,timestamp\n{GOOD_CELL},{TS},extra\n".encode(), "body", None, "malformed CSV"),
        (
            f"lat,lon,timestamp\n50.4,-104.6,{TS}\n50.4,west,{TS}\n".encode(),
            "lon",
            1,
            r"CSV row 1 \(0-based, after the header\), column lon must be a number, got 'west'",
        ),
        (
            f"lat,lon,timestamp\n50.4,-104.6,{TS}\n50.4,-104.6,\n".encode(),
            "timestamp",
            1,
            r"CSV row 1 .*column timestamp: missing",
        ),
        (
            f"h3_cell,timestamp\n{GOOD_CELL},{TS}\n{GOOD_CELL},3pm\n".encode(),
            "timestamp",
            1,
            "'3pm' is not an ISO-8601 timestamp",
        ),
        (
            f"lat,lon,timestamp\n-90.5,-104.6,{TS}\n".encode(),
            "lat",
            0,
            r"-90\.5 is outside \[-90, 90\]",
        ),
        (f"h3_cell,timestamp\nxyz,{TS}\n".encode(), "h3_cell", 0, "'xyz' is not a valid H3 cell"),
        (b"h3_cell,timestamp\n", "instances", None, "no instances"),
    ],
)
def test_csv_errors_name_the_field_and_row(body, field, instance, message):
    with pytest.raises(RequestError, match=message) as caught:
        parse_csv(body, RESOLUTION, 100)
    assert (caught.value.status, caught.value.field, caught.value.instance) == (
        400,
        field,
        instance,
    )


def test_unknown_fields_are_ignored_even_when_arrow_cannot_type_them():
    document = {
        "instances": [
            {"h3_cell": GOOD_CELL, "timestamp": TS, "note": 1},
            {"lat": 50.45, "lon": -104.6, "timestamp": TS, "note": "mixed types"},
        ]
    }
    parsed = parse_json(json.dumps(document).encode(), RESOLUTION, 10)
    assert h3.int_to_str(int(parsed.cells[0])) == GOOD_CELL
    assert h3.int_to_str(int(parsed.cells[1])) == h3.latlng_to_cell(50.45, -104.6, RESOLUTION)


def test_deeply_nested_json_is_a_400_not_a_crash():
    with pytest.raises(RequestError, match="nested too deeply") as caught:
        parse_json(b"[" * 100_000 + b"]" * 100_000, RESOLUTION, 10)
    assert caught.value.status == 400


# ---------------------------------------------------------------------------------------------
# Hostile and odd input: bounded cost, a 4xx naming the field, never a 500


def test_distinct_unknown_keys_cost_linear_time():
    """12,000 instances with one extra key each used to cost 8.7 s and 1.6 GB (Arrow unified a
    12,000-field struct); unknown fields are now never looked at."""
    document = {
        "instances": [
            {"h3_cell": GOOD_CELL, "timestamp": TS, f"extra_{i}": i} for i in range(12_000)
        ]
    }
    body = json.dumps(document).encode()
    started = time.perf_counter()
    parsed = parse_json(body, RESOLUTION, 50_000)
    elapsed = time.perf_counter() - started
    assert len(parsed) == 12_000
    assert elapsed < 1.0, f"{elapsed:.2f}s for {len(body)} bytes"


def raw_json(**fields: str) -> bytes:
    """``{"instances": [{...}]}`` with each field's JSON text as given, for what ``json.dumps``
    cannot write (integers of 5,000 digits, deep nesting)."""
    inner = ", ".join(f'"{name}": {text}' for name, text in fields.items())
    return ('{"instances": [{' + inner + "}]}").encode()


def test_nesting_is_bounded_even_inside_an_ignored_field():
    """900 levels inside an ignored field cost 0.5 s and 200 MB for a 6 KB body."""

    def nested(depth: int) -> bytes:
        return raw_json(
            h3_cell=json.dumps(GOOD_CELL), timestamp=json.dumps(TS), x="[" * depth + "]" * depth
        )

    for depth in (900, 30):  # 30 in the field + 3 of the envelope = 33
        with pytest.raises(RequestError, match="nested too deeply: more than 32 levels") as caught:
            parse_json(nested(depth), RESOLUTION, 10)
        assert (caught.value.status, caught.value.field) == (400, "body")
    assert len(parse_json(nested(29), RESOLUTION, 10)) == 1
    # brackets inside strings do not count, nor after an escaped quote inside the string
    brackets = "[" * 40 + '\\\\\\"' + "{" * 40
    fine = raw_json(h3_cell=json.dumps(GOOD_CELL), timestamp=json.dumps(TS), x=f'"{brackets}"')
    assert len(parse_json(fine, RESOLUTION, 10)) == 1


HUGE = "9" * 5_000  # more digits than Python converts to an int (4,300 by default)


@pytest.mark.parametrize(
    ("body", "field", "instance", "message"),
    [
        (
            raw_json(lat=HUGE, lon="0", timestamp=json.dumps(TS)),
            "lat",
            0,
            r"instances\[0\]\.lat: an integer of 5000 digits is outside \[-90, 90\]",
        ),
        (
            raw_json(h3_cell=json.dumps(GOOD_CELL), timestamp="-" + HUGE),
            "timestamp",
            0,
            "must be a string, got an integer of 5000 digits",
        ),
        (
            json.dumps({"instances": [{"lat": 2**53 + 1, "lon": 0, "timestamp": TS}]}),
            "lat",
            0,
            r"9007199254740993 is outside \[-90, 90\]",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"lat": 50.4, "lon": -104.6, "timestamp": TS},
                        {"lat": 50.4, "lon": -(2**63), "timestamp": TS},
                    ]
                }
            ),
            "lon",
            1,
            r"instances\[1\]\.lon: -9223372036854775808 is outside \[-180, 180\]",
        ),
        (
            json.dumps(
                {"instances": [{"h3_cell": GOOD_CELL, "timestamp": "1677-09-21T00:12:44Z"}]}
            ),
            "timestamp",
            0,
            "'1677-09-21T00:12:44Z' is outside the range of 64-bit nanosecond timestamps "
            r"\(1677-09-21T01:00:00Z to 2262-04-11T23:59:59Z\)",
        ),
        (
            json.dumps(
                {"instances": [{"h3_cell": GOOD_CELL, "timestamp": "9999-12-31T23:00:00Z"}]}
            ),
            "timestamp",
            0,
            "'9999-12-31T23:00:00Z' is outside the range of 64-bit nanosecond timestamps",
        ),
        (
            json.dumps(
                {
                    "instances": [
                        {"h3_cell": GOOD_CELL, "timestamp": TS},
                        {"h3_cell": GOOD_CELL, "timestamp": "0001-01-01T00:00:00"},
                    ]
                }
            ),
            "timestamp",
            1,
            r"instances\[1\]\.timestamp: '0001-01-01T00:00:00' is outside the range",
        ),
    ],
)
def test_out_of_range_numbers_and_times_name_the_field(body, field, instance, message):
    with pytest.raises(RequestError, match=message) as caught:
        parse_json(body if isinstance(body, bytes) else body.encode(), RESOLUTION, 10)
    assert (caught.value.status, caught.value.field, caught.value.instance) == (
        400,
        field,
        instance,
    )


def test_a_number_too_long_for_python_in_an_ignored_field_is_ignored():
    body = raw_json(h3_cell=json.dumps(GOOD_CELL), timestamp=json.dumps(TS), n=HUGE)
    assert len(parse_json(body, RESOLUTION, 10)) == 1


def test_the_edges_of_the_timestamp_range_are_accepted():
    times = ["1677-09-21T01:00:00Z", "2262-04-11T23:59:59Z", "2262-04-11T23:30:00"]
    document = {"instances": [{"h3_cell": GOOD_CELL, "timestamp": t} for t in times]}
    parsed = parse_json(json.dumps(document).encode(), RESOLUTION, 10)
    expected = [pd.Timestamp(t[:13] + ":00:00Z").value for t in times]
    assert parsed.hour_ns.tolist() == expected
    csv_body = "h3_cell,timestamp\n" + "".join(f"{GOOD_CELL},{t}\n" for t in times)
    assert parse_csv(csv_body.encode(), RESOLUTION, 10).hour_ns.tolist() == expected
    with pytest.raises(RequestError, match="outside the range") as caught:
        parse_csv(f"h3_cell,timestamp\n{GOOD_CELL},9999-01-01T00:00:00Z\n".encode(), RESOLUTION, 10)
    assert (caught.value.field, caught.value.instance) == ("timestamp", 0)


@pytest.mark.parametrize("newline", ["\r", "\n", "\r\n"])
def test_csv_line_endings(newline):
    """CR-only line endings (old Mac exports) used to be a 500."""
    rows = [f"{GOOD_CELL},{TS}", f"{GOOD_CELL},2025-03-03T11:00:00Z"]
    body = newline.join(["h3_cell,timestamp", *rows]) + newline
    parsed = parse_csv(body.encode(), RESOLUTION, 10)
    assert parsed.hour_ns.tolist() == pd.to_datetime([TS, "2025-03-03T11:00:00Z"]).asi8.tolist()
    coordinates = newline.join(["lat,lon,timestamp", f"50.45,-104.6,{TS}"])
    assert len(parse_csv(coordinates.encode(), RESOLUTION, 10)) == 1


@pytest.mark.parametrize(
    "header",
    [
        "H3_CELL,TIMESTAMP",
        " h3_cell , Timestamp ",
        "H3_Cell,\tTIMESTAMP\t",
        '"H3_CELL","TIMESTAMP"',
    ],
)
def test_csv_headers_match_as_in_ingestion(header):
    """Ingestion matches header names case- and blank-insensitively; so does serving."""
    parsed = parse_csv(f"{header}\n{GOOD_CELL},{TS}\n".encode(), RESOLUTION, 10)
    assert h3.int_to_str(int(parsed.cells[0])) == GOOD_CELL
    parsed = parse_csv(f"LAT, Lon ,TimeStamp\n50.45,-104.6,{TS}\n".encode(), RESOLUTION, 10)
    assert h3.int_to_str(int(parsed.cells[0])) == h3.latlng_to_cell(50.45, -104.6, RESOLUTION)
    with pytest.raises(RequestError, match="repeats a column"):
        parse_csv(f"h3_cell,H3_CELL,timestamp\n{GOOD_CELL},{GOOD_CELL},{TS}\n".encode(), 7, 10)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b'{"instances": [1e99999, {"a": [}]}', "body", "malformed JSON"),
        (b'h3_cell,timestamp\n"unterminated,x\n', "body", "malformed CSV"),
        (b"h3_cell,timestamp\n\xff\xfe,\x00\n", "body", "malformed CSV"),
    ],
)
def test_malformed_bodies_name_the_body(body, field, message):
    kind = "application/json" if body.startswith(b"{") else "text/csv"
    with pytest.raises(RequestError, match=message) as caught:
        parse_request(body, kind, RESOLUTION, RequestLimits())
    assert (caught.value.status, caught.value.field) == (400, field)


SYNTAX_TEXT = st.text(alphabet='[]{}"\\,:ab \u00e9', max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | SYNTAX_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(SYNTAX_TEXT, children, max_size=4)
    ),
    max_leaves=30,
)


def _reference_structure(value, depth: int = 1) -> tuple[int, int, int]:
    """``(containers, depth, values + empty containers)`` by walking the decoded value."""
    if isinstance(value, list | dict):
        children = list(value.values() if isinstance(value, dict) else value)
        counted = [_reference_structure(child, depth + 1) for child in children]
        return (
            1 + sum(c for c, _, _ in counted),
            max([depth, *(d for _, d, _ in counted)]),
            1 + sum(v for _, _, v in counted) + (not children),
        )
    return 0, depth - 1, 1


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_the_structure_scan_agrees_with_the_decoder(value, ascii_only):
    """Containers, depth and values counted on the bytes, strings with brackets, commas,
    quotes and backslashes included, equal what the decoded document has."""
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert _json_structure(body) == _reference_structure(value)


ODD_VALUES = JSON_VALUES | st.sampled_from(
    [2**53 + 1, -(2**63), 2**64, float("inf"), float("nan"), "1677-09-21T00:12:44Z", "9999-01-01"]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["h3_cell", "lat", "lon", "timestamp", "other"]) | SYNTAX_TEXT,
            ODD_VALUES | st.sampled_from([GOOD_CELL, TS, 50.45, -104.6]),
            max_size=5,
        )
        | ODD_VALUES,
        max_size=6,
    )
)
def test_any_instances_parse_or_get_a_4xx_naming_the_field(instances):
    body = json.dumps({"instances": instances}).encode()
    try:
        parsed = parse_json(body, RESOLUTION, 100)
    except RequestError as error:
        assert 400 <= error.status < 500 and error.field is not None, error.to_dict()
    else:
        assert len(parsed) == len(instances)


def _call_with_disconnect(app, body_parts: list[bytes]):
    """A client that sends ``body_parts`` of a longer body, then goes away."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in body_parts]
    messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_large_body_is_parsed_off_the_event_loop(loaded, features, monkeypatch):
    from geo_busyness.serving import app as app_module

    where = []
    answer = app_module._answer

    def recording(*args):
        where.append(threading.current_thread() is threading.main_thread())
        return answer(*args)

    monkeypatch.setattr(app_module, "_answer", recording)
    app = create_app(loaded, capacity=Capacity(inline_bytes=2_000))
    instance = {"h3_cell": features["h3_cell"].iloc[0], "timestamp": TS}
    assert post_json(app, {"instances": [instance]})[0] == 200  # small: on the loop
    assert post_json(app, {"instances": [instance] * 100})[0] == 200  # large: in a thread
    assert where == [True, False]


def test_a_request_that_gets_no_turn_in_time_is_a_503(loaded, features):
    """One slot, held by a client that trickles its body: the next request waits its
    queue timeout, then gets 503 with Retry-After, and the slot serves again afterwards."""
    app = create_app(loaded, capacity=Capacity(max_active=1, queue_timeout_s=0.2))
    body = json.dumps({"instances": [{"h3_cell": features["h3_cell"].iloc[0], "timestamp": TS}]})

    async def one(receive) -> dict:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/invocations",
            "raw_path": b"/invocations",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
        }
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return {"status": start["status"], "headers": dict(start["headers"])}

    async def slow_receive():
        await asyncio.sleep(0.6)
        return {"type": "http.request", "body": body.encode(), "more_body": False}

    async def fast_receive():
        return {"type": "http.request", "body": body.encode(), "more_body": False}

    async def scenario():
        slow = asyncio.create_task(one(slow_receive))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        refused = await one(fast_receive)
        waited = time.perf_counter() - started
        return await slow, refused, waited, await one(fast_receive)

    slow, refused, waited, after = asyncio.run(scenario())
    assert slow["status"] == 200 and after["status"] == 200
    assert refused["status"] == 503 and refused["headers"][b"retry-after"] == b"1"
    assert 0.15 < waited < 0.5


def test_a_client_disconnect_is_not_an_error(app, caplog):
    logger = logging.getLogger("geo_busyness.serving")
    with caplog.at_level(logging.INFO, logger=logger.name):
        _call_with_disconnect(app, [b'{"instances": [', b'{"h3_cell": "87'])
    records = [r for r in caplog.records if r.name == logger.name]
    assert [r.levelno for r in records] == [logging.INFO]  # no traceback, no ERROR
    line = json.loads(records[0].getMessage())
    assert (line["event"], line["status"]) == ("client_disconnected", 499)
    assert "disconnected" in line["error"]


def test_too_many_instances_is_413_in_both_formats():
    document = {"instances": [{"h3_cell": GOOD_CELL, "timestamp": TS}] * 11}
    with pytest.raises(RequestError, match="11 instances in one request; at most 10") as caught:
        parse_json(json.dumps(document).encode(), RESOLUTION, 10)
    assert caught.value.status == 413
    csv_body = "h3_cell,timestamp\n" + f"{GOOD_CELL},{TS}\n" * 11
    with pytest.raises(RequestError) as caught:
        parse_csv(csv_body.encode(), RESOLUTION, 10)
    assert caught.value.status == 413


def test_content_types():
    body = json.dumps({"instances": [{"h3_cell": GOOD_CELL, "timestamp": TS}]}).encode()
    limits = RequestLimits()
    parsed = parse_request(body, "Application/JSON; charset=utf-8", RESOLUTION, limits)
    assert len(parsed) == 1
    for content_type in ("text/plain", None, "application/x-www-form-urlencoded"):
        with pytest.raises(RequestError, match="unsupported Content-Type") as caught:
            parse_request(body, content_type, RESOLUTION, limits)
        assert (caught.value.status, caught.value.field) == (415, "Content-Type")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("text/csv;q=0, application/json", "application/json"),
        ("application/xml, text/*", "text/csv"),
    ],
)
def test_accept_negotiation(accept, expected):
    assert negotiate(accept) == expected


def test_unanswerable_accept_is_406():
    with pytest.raises(RequestError) as caught:
        negotiate("application/xml")
    assert caught.value.status == 406


# ---------------------------------------------------------------------------------------------
# The app


def test_ping(app):
    status, _, body = call(app, "GET", "/ping")
    assert status == 200
    assert json.loads(body)["model_version"] == "3"


def test_predictions_through_the_app_equal_the_offline_model(app, model, features, loaded):
    """Offline/online parity: every snapshot row, shuffled, by cell and by coordinate."""
    names = loaded.manifest.feature_names
    order = np.random.default_rng(0).permutation(len(features))
    rows = features.iloc[order].reset_index(drop=True)
    # any time inside the hour names that hour
    times = rows["hour_start"] + pd.to_timedelta(np.arange(len(rows)) % 3600, unit="s")
    lat_lon = [h3.cell_to_latlng(c) for c in rows["h3_cell"]]
    instances = [
        {"h3_cell": c, "timestamp": t.isoformat()}
        if i % 2
        else {"lat": ll[0], "lon": ll[1], "timestamp": t.isoformat()}
        for i, (c, t, ll) in enumerate(zip(rows["h3_cell"], times, lat_lon, strict=True))
    ]
    status, headers, body = post_json(app, {"instances": instances})
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["model_version"] == "3" and answer["model_name"] == "busyness"
    predictions = pd.DataFrame(answer["predictions"])
    assert predictions["h3_cell"].tolist() == rows["h3_cell"].tolist()
    assert pd.to_datetime(predictions["hour_start"]).tolist() == rows["hour_start"].tolist()
    expected = expected_predictions(model, rows, names)
    # The text round-trips to exactly the float32 the model returned.
    np.testing.assert_array_equal(predictions["busyness"].to_numpy().astype("float32"), expected)


def test_csv_in_and_out(app, model, features, loaded):
    rows = features.iloc[::7].reset_index(drop=True)
    csv_text = "h3_cell,timestamp\n" + "".join(
        f"{c},{t.isoformat()}\n" for c, t in zip(rows["h3_cell"], rows["hour_start"], strict=True)
    )
    status, headers, body = call(
        app,
        "POST",
        "/invocations",
        csv_text.encode(),
        {"content-type": "text/csv", "accept": "text/csv"},
    )
    assert status == 200, body
    assert headers["content-type"].startswith("text/csv")
    assert headers["x-model-version"] == "3"
    lines = body.decode().splitlines()
    assert lines[0] == "h3_cell,hour_start,busyness"
    table = pd.DataFrame([line.split(",") for line in lines[1:]], columns=lines[0].split(","))
    assert table["h3_cell"].tolist() == rows["h3_cell"].tolist()
    expected = expected_predictions(model, rows, loaded.manifest.feature_names)
    np.testing.assert_array_equal(table["busyness"].astype("float32").to_numpy(), expected)


def test_a_key_outside_the_snapshot_is_422_with_the_horizon(app, features):
    cell = features["h3_cell"].iloc[0]
    late = (HORIZON_END + pd.Timedelta(minutes=5)).isoformat()
    status, _, body = post_json(
        app,
        {
            "instances": [
                {"h3_cell": cell, "timestamp": DEMO_HORIZON_START.isoformat()},
                {"h3_cell": cell, "timestamp": late},
            ]
        },
    )
    error = json.loads(body)["error"]
    assert status == 422
    assert (error["field"], error["instance"]) == ("timestamp", 1)
    assert (
        "outside the snapshot's horizon [2025-03-03T00:00:00+00:00, 2025-03-04T00:00:00+00:00)"
        in (error["message"])
    )

    far_away = h3.latlng_to_cell(45.0, -75.0, RESOLUTION)
    status, _, body = post_json(
        app, {"instances": [{"h3_cell": far_away, "timestamp": DEMO_HORIZON_START.isoformat()}]}
    )
    error = json.loads(body)["error"]
    assert status == 422
    assert (error["field"], error["instance"]) == ("h3_cell", 0)
    assert f"{far_away} is not an active hexagon" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("POST", "/invocations", b"x" * 200_001, {"content-type": "text/csv"}, 413, "200000"),
        ("POST", "/invocations", b"{}", {"content-type": "text/xml"}, 415, "text/xml"),
        ("POST", "/invocations", b"{", {"content-type": "application/json"}, 400, "malformed"),
        (
            "POST",
            "/invocations",
            b"{}",
            {"content-type": "application/json", "accept": "image/png"},
            406,
            "image/png",
        ),
        ("GET", "/invocations", b"", {}, 405, "Method Not Allowed"),
        ("GET", "/nowhere", b"", {}, 404, "Not Found"),
    ],
)
def test_http_errors_have_json_bodies(app, method, path, body, headers, status, message):
    got, response_headers, content = call(app, method, path, body, headers)
    assert got == status
    assert response_headers["content-type"].startswith("application/json")
    error = json.loads(content)["error"]
    assert error["status"] == status
    assert message in error["message"]


def test_too_many_rows_through_the_app(app):
    document = {"instances": [{"h3_cell": GOOD_CELL, "timestamp": TS}] * 1_001}
    status, _, body = post_json(app, document)
    assert status == 413
    assert "at most 1000" in json.loads(body)["error"]["message"]


def test_inference_id_and_one_log_line_per_request(app, caplog, features):
    instance = {"h3_cell": features["h3_cell"].iloc[0], "timestamp": TS}
    logger = logging.getLogger("geo_busyness.serving")
    with caplog.at_level(logging.INFO, logger=logger.name):
        status, headers, body = post_json(
            app, {"instances": [instance, instance]}, {INFERENCE_ID_HEADER: "req-42"}
        )
        bad_status, _, bad_body = post_json(app, {"instances": [{"timestamp": TS}]})
    assert status == 200 and json.loads(body)["inference_id"] == "req-42"
    assert headers["x-inference-id"] == "req-42"
    generated = json.loads(bad_body)["inference_id"]
    assert bad_status == 400 and len(generated) == 36  # a uuid4

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == logger.name]
    assert len(lines) == 2
    assert lines[0]["inference_id"] == "req-42"
    assert (lines[0]["status"], lines[0]["rows"], lines[0]["model_version"]) == (200, 2, "3")
    assert lines[0]["latency_ms"] >= 0
    assert (lines[1]["status"], lines[1]["inference_id"]) == (400, generated)
    assert "h3_cell" in lines[1]["error"]


def test_a_bug_is_a_json_500_and_the_app_keeps_serving(loaded, monkeypatch, features):
    app = create_app(loaded)
    instance = {"h3_cell": features["h3_cell"].iloc[0], "timestamp": TS}

    def broken(self, rows):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(bundle_module.LoadedBundle, "predict_rows", broken)
    status, _, body = post_json(app, {"instances": [instance]})
    assert status == 500
    assert "internal error" in json.loads(body)["error"]["message"]
    monkeypatch.undo()
    status, _, _ = post_json(app, {"instances": [instance]})
    assert status == 200


def test_the_demo_bundle_serves(tmp_path):
    directory = write_demo_bundle(tmp_path / "demo", rings=1, hours=2, n_estimators=20)
    demo = load_bundle(directory)
    assert len(demo.index) == 7 * 2
    status, _, body = post_json(
        create_app(demo),
        {"instances": [{"lat": 50.4452, "lon": -104.6189, "timestamp": TS.replace("10", "01")}]},
    )
    assert status == 200, body


# ---------------------------------------------------------------------------------------------
# Explanations


def test_explain_returns_contributions_that_add_up_to_each_forecast(app, loaded, features):
    """``"explain": true``: every prediction carries each feature's SHAP contribution and the
    bias, in the model's margin: they sum to log(busyness) for the Poisson model."""
    rows = features.iloc[::5].reset_index(drop=True)
    document = {**instance_json(rows["h3_cell"], rows["hour_start"]), "explain": True}
    status, _, body = post_json(app, document)
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    names = loaded.manifest.feature_names
    for prediction in predictions:
        contributions = prediction["contributions"]
        assert list(contributions) == [*names, "bias"]
        assert np.log(prediction["busyness"]) == pytest.approx(
            sum(contributions.values()), abs=1e-3
        )
    # without the flag (or with false) the body is as before
    plain = json.loads(post_json(app, {**document, "explain": False})[2])["predictions"]
    assert all("contributions" not in p for p in plain)
    assert [p["busyness"] for p in plain] == [p["busyness"] for p in predictions]


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_explain_must_be_a_boolean(app, features, value):
    rows = features.iloc[:1]
    document = {**instance_json(rows["h3_cell"], rows["hour_start"]), "explain": value}
    status, _, body = post_json(app, document)
    assert status == 400
    assert json.loads(body)["error"]["field"] == "explain"


def test_explanations_come_in_json_only(app, features):
    rows = features.iloc[:1]
    document = {**instance_json(rows["h3_cell"], rows["hour_start"]), "explain": True}
    status, _, body = post_json(app, document, {"accept": "text/csv"})
    assert status == 406
    assert json.loads(body)["error"]["field"] == "Accept"


def test_an_explained_batch_is_bounded(loaded, features):
    from geo_busyness.serving.requests import MAX_EXPLAINED_INSTANCES

    app = create_app(loaded, RequestLimits(max_body_bytes=1_000_000, max_instances=5_000))
    rows = features.iloc[np.arange(MAX_EXPLAINED_INSTANCES + 1) % len(features)]
    document = {**instance_json(rows["h3_cell"], rows["hour_start"]), "explain": True}
    status, _, body = post_json(app, document)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["field"] == "explain" and f"{MAX_EXPLAINED_INSTANCES:,}" in error["message"]
    # the same batch without explanations is fine
    assert post_json(app, {**document, "explain": False})[0] == 200
