"""Partitions follow the data: a city without a catalog first_day starts at its oldest landed
day, so the UI does not show hundreds of days that never had data."""

import dataclasses
import datetime as dt
import http.server
import threading

import dagster as dg
import pytest
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from geo_busyness.core.catalog import catalog_yaml, load_catalog
from geo_busyness.definitions import build_definitions
from geo_busyness.partitions import day_range_problem
from geo_busyness.resources.landing_zone import FOLDER_LISTING_RETRIES, LandingZone
from geo_busyness.simulate import MULTI_CITIES, city_landing_key, landing_key

pytestmark = pytest.mark.integration

REGINA, NEW_YORK, KOLKATA = MULTI_CITIES


def first_partition(defs: dg.Definitions, city) -> str:
    assets_def = defs.get_assets_def(dg.AssetKey([city.key, "raw_courier_pings"]))
    return assets_def.partitions_def.get_first_partition_key()


def test_cities_start_at_their_oldest_landed_day_unless_the_catalog_says(tmp_path, monkeypatch):
    zone = LandingZone(root=str(tmp_path / "landing"))
    zone.write(city_landing_key(REGINA.id, dt.date(2026, 3, 5), "a.csv"), b"x")
    zone.write(city_landing_key(REGINA.id, dt.date(2026, 3, 9), "a.csv"), b"x")
    zone.write(landing_key(dt.date(2026, 4, 1), "export.csv"), b"x")  # every city's
    zone.write("raw/city=regina/not-a-day/a.csv", b"x")  # ignored
    zone.write(city_landing_key(REGINA.id, dt.date(2099, 1, 1), "a.csv"), b"x")  # future
    monkeypatch.setenv("GEO_BUSYNESS_LANDING_ZONE", zone.root)
    catalog = tmp_path / "cities.yaml"
    kolkata = dataclasses.replace(KOLKATA, first_day=dt.date(2026, 1, 1))
    catalog.write_text(catalog_yaml([REGINA, NEW_YORK, kolkata]))
    defs = build_definitions(load_catalog(catalog))
    assert first_partition(defs, REGINA) == "2026-03-05"
    assert first_partition(defs, NEW_YORK) == "2026-04-01"  # from the export of every city
    assert first_partition(defs, kolkata) == "2026-01-01"  # the catalog wins
    landed = dataclasses.replace(REGINA, first_landed_day=dt.date(2026, 3, 5))
    problem = day_range_problem(landed, "2026-03-01")
    assert "the oldest day landed for regina" in problem and "first_day" in problem


def test_an_unreadable_landing_zone_falls_back_to_the_start_date(tmp_path, monkeypatch):
    monkeypatch.setenv("GEO_BUSYNESS_LANDING_ZONE", "s3://no-such-bucket/landing")
    monkeypatch.setenv("GEO_BUSYNESS_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("GEO_BUSYNESS_START_DATE", "2026-02-01")
    catalog = tmp_path / "cities.yaml"
    catalog.write_text(catalog_yaml([REGINA]))
    with pytest.warns(UserWarning, match="landing zone not readable"):
        defs = build_definitions(load_catalog(catalog))
    assert first_partition(defs, REGINA) == "2026-02-01"


def test_the_folder_listing_gives_up_after_one_retry_file_reads_keep_theirs(monkeypatch):
    """The listing runs at every definitions load: a failing bucket costs it one retry, not the
    S3 resource's (5 by default; their backoff held each load 11 s)."""
    requests: list[str] = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s3 = S3Resource(
            endpoint_url=f"http://127.0.0.1:{server.server_port}",
            region_name="us-east-1",
            max_attempts=2,
        )
        zone = LandingZone(root="s3://landing-bucket/zone", s3=s3)
        with pytest.raises(ClientError, match="reached max retries: 1"):
            zone.day_folders()
        assert FOLDER_LISTING_RETRIES == 1
        assert len(requests) == 2  # the request and one retry
        requests.clear()
        with pytest.raises(ClientError, match="reached max retries: 2"):
            zone.list_files()
        assert len(requests) == 3  # the resource's own setting: the request and 2 retries
    finally:
        server.shutdown()
        server.server_close()


def test_a_city_absent_from_an_export_gets_no_partition_for_that_day(tmp_path):
    from geo_busyness.resources.environment import local_resources
    from geo_busyness.simulate import SimulationConfig, simulate

    resources = local_resources(tmp_path)
    day = dt.date(2026, 5, 4)
    # An export of every city that holds only Regina's rows.
    simulate(
        SimulationConfig(start_date=day, days=1, pings_per_day=500, file_dirt=frozenset()),
        put=resources["landing_zone"].write,
        progress=False,
    )
    catalog = tmp_path / "cities.yaml"
    catalog.write_text(catalog_yaml([REGINA, NEW_YORK]))
    built = build_definitions(load_catalog(catalog))
    with dg.DagsterInstance.ephemeral() as instance:
        for city in (REGINA, NEW_YORK):
            dg.materialize(
                [*built.assets, *built.asset_checks],
                selection=dg.AssetSelection.assets(
                    dg.AssetKey([city.key, "raw_courier_pings"]),
                    dg.AssetKey([city.key, "clean_courier_pings"]),
                    dg.AssetKey([city.key, "quarantined_pings"]),
                ),
                partition_key=day.isoformat(),
                instance=instance,
                resources=resources,
            )
        materialized = {
            city.id: instance.get_materialized_partitions(
                dg.AssetKey([city.key, "clean_courier_pings"])
            )
            for city in (REGINA, NEW_YORK)
        }
    assert materialized == {REGINA.id: {day.isoformat()}, NEW_YORK.id: set()}
