"""The report store and its server: links a browser opens, pictures shown on the asset page."""

import base64

import dagster as dg
import pytest

from geo_busyness.resources.environment import build_resources
from geo_busyness.resources.reports import LOCAL_REPORTS_URL, ReportStore, report_link
from geo_busyness.stack.ui import report_app

pytestmark = [
    pytest.mark.unit,
    # Starlette asks for httpx2 under its TestClient; httpx is what we have
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_a_served_store_links_pictures_by_address_short_enough_to_show_inline(tmp_path):
    store = ReportStore(base_path=str(tmp_path), public_url="http://127.0.0.1:3001/")
    value = store.picture("pictures/regina/hex_hourly_busyness/2026-03-31/map a.png", PNG, "map")
    assert isinstance(value, dg.MarkdownMetadataValue)
    assert value.md_str == (
        "![map](http://127.0.0.1:3001/pictures/regina/hex_hourly_busyness/2026-03-31/map%20a.png)"
    )
    # the Dagster UI renders Markdown metadata inline below 1,000 characters only
    assert len(value.md_str) < 1000
    saved = tmp_path / "pictures/regina/hex_hourly_busyness/2026-03-31/map a.png"
    assert saved.read_bytes() == PNG


def test_an_unserved_store_embeds_the_picture(tmp_path):
    value = ReportStore(base_path=str(tmp_path)).picture("pictures/p.png", PNG, "map")
    assert value.md_str == f"![map](data:image/png;base64,{base64.b64encode(PNG).decode()})"
    assert not (tmp_path / "pictures").exists()


def test_links_are_clickable_only_where_a_browser_opens_them(tmp_path):
    served = ReportStore(base_path=str(tmp_path), public_url="http://127.0.0.1:3001")
    location = served.save("drift/regina/2026-03-31.html", b"<html></html>", "text/html")
    assert location == "http://127.0.0.1:3001/drift/regina/2026-03-31.html"
    assert isinstance(report_link(location), dg.UrlMetadataValue)
    local = ReportStore(base_path=str(tmp_path)).save("drift/x.html", b"", "text/html")
    assert local.startswith("file://")
    # a browser refuses file:// from the UI's page: shown as a location to copy
    assert isinstance(report_link(local), dg.PathMetadataValue)
    assert isinstance(report_link("s3://bucket/drift/x.html"), dg.PathMetadataValue)


def test_the_local_store_is_served_by_default_and_s3_is_not(monkeypatch):
    assert build_resources()["report_store"].public_url == LOCAL_REPORTS_URL
    monkeypatch.setenv("GEO_BUSYNESS_REPORTS_URL", "http://127.0.0.1:4999")
    assert build_resources()["report_store"].public_url == dg.EnvVar("GEO_BUSYNESS_REPORTS_URL")
    monkeypatch.delenv("GEO_BUSYNESS_REPORTS_URL")
    monkeypatch.setenv("GEO_BUSYNESS_REPORTS", "s3://bucket/reports")
    assert build_resources()["report_store"].public_url is None


def test_the_report_server_serves_the_store_read_only(tmp_path):
    from starlette.testclient import TestClient

    (tmp_path / "drift").mkdir()
    (tmp_path / "drift" / "d.html").write_text("<html>report</html>")
    (tmp_path.parent / "secret.txt").write_text("outside the store")
    with TestClient(report_app(str(tmp_path))) as client:
        assert client.get("/healthz").text == "ok"
        page = client.get("/drift/d.html")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/drift/missing.html").status_code == 404
        assert client.get("/../secret.txt").status_code == 404
        assert client.get("/%2e%2e/secret.txt").status_code == 404
        assert client.post("/drift/d.html").status_code == 405
