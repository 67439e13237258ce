"""The platform runs itself, on a real Dagster daemon and webserver (`dagster dev`).

The catalog serves two cities: the simulated default (regina) and a second one onboarded by
adding it to the catalog and dropping its files. History of regina is loaded the way the
README's demo does it (21 baseline days, a trained, promoted and deployed champion). Then, with
nobody launching anything: a baseline day of each city dropped into the landing zone is picked
up by the landing-zone sensor (the second city's for that city) and flows through automation to
its features; a day of the `new_district` scenario (a new restaurant district takes a large share
of demand), dropped with them, flows to its forecast and drift report, the drift sensor requests
a retrain, and the retrain either passes the blocking gates (new champion, redeployed) or is
refused (the champion keeps serving). Run and event history is read through the instance.
"""

import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import requests

from geo_busyness.stack.services import free_port, stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Three weeks: as many as the gates need for a first champion (test_stack_environment), each
# further day costs the setup seconds.
HISTORY_DAYS = 21
# Fixed days, whatever the date the suite runs on: the partitions end on DRIFT_DAY
# (GEO_BUSYNESS_END_DATE), which is then the latest partition, where forecasts and drift reports
# are made, as yesterday would be. History ends two days before it; a baseline day and the
# drifted day follow through the daemon.
DRIFT_DAY = dt.date(2026, 3, 31)
BASELINE_DAY = DRIFT_DAY - dt.timedelta(days=1)
HISTORY_START = DRIFT_DAY - dt.timedelta(days=HISTORY_DAYS + 1)
PINGS_PER_DAY = 6000
# The daemon ticks our sensors every few seconds instead of every 30 s.
SENSOR_INTERVAL_SECONDS = 3
POLL_SECONDS = 1
REGINA = "regina"
SECOND_CITY = "jersey-city"
CATALOG = f"""
cities:
  - id: {REGINA}
    name: Regina, SK
    center: [50.4452, -104.6189]
    service_radius_km: 12
    timezone: America/Regina
    h3_resolution: 7
    restaurant_clusters: 5
  - id: {SECOND_CITY}
    name: Jersey City, NJ
    center: [40.72, -74.05]
    service_radius_km: 6
    timezone: America/New_York
    h3_resolution: 8
    restaurant_clusters: 4
    first_day: {BASELINE_DAY.isoformat()}
"""


def wait_for(what: str, predicate, timeout: float, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited while waiting for {what}:\n{tail(log)}")
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    if not log.exists():
        return f"(no {log} yet)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def simulate(
    env: dict, start: dt.date, days: int, scenario: str = "baseline", city: str = REGINA
) -> None:
    subprocess.run(
        [BIN / "geo-busyness", "simulate", "--start", start.isoformat(), "--days", str(days),
         "--pings-per-day", str(PINGS_PER_DAY), "--scenario", scenario, "--city", city],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    home = root / "home"
    home.mkdir()
    catalog = root / "cities.yaml"
    catalog.write_text(CATALOG)
    # the demo writes the local instance settings (run concurrency) into DAGSTER_HOME
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "GEO_BUSYNESS_DATA_DIR": str(root / "data"),
        "GEO_BUSYNESS_ENDPOINT_PORT": str(free_port()),
        "GEO_BUSYNESS_END_DATE": DRIFT_DAY.isoformat(),
        "GEO_BUSYNESS_SENSOR_INTERVAL_SECONDS": str(SENSOR_INTERVAL_SECONDS),
        "GEO_BUSYNESS_CITIES": str(catalog),
        # where `geo-busyness ui` serves the reports and the MLflow UI: links written by the demo
        # and the daemon's runs open there
        "GEO_BUSYNESS_REPORTS_URL": f"http://127.0.0.1:{free_port()}",
        "GEO_BUSYNESS_MLFLOW_UI_URL": f"http://127.0.0.1:{free_port()}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    demo = subprocess.run(
        [BIN / "geo-busyness", "demo", "--start", HISTORY_START.isoformat(),
         "--days", str(HISTORY_DAYS), "--pings-per-day", str(PINGS_PER_DAY),
         "--no-poc-baseline"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "promoted in this run" in demo.stdout

    # `geo-busyness ui`, as `scripts/dev ui` starts it: the report server, the MLflow UI and
    # `dagster dev` (webserver + daemon), stopped together when it is interrupted.
    log = root / "data" / "ui-logs" / "dagster.log"
    port = free_port()
    with (root / "ui.log").open("w") as output:
        dagster = subprocess.Popen(
            [BIN / "geo-busyness", "ui", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A background shell starts us with SIGINT ignored: restore the default before exec.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_for(
            "the webserver", lambda: _answers(f"http://127.0.0.1:{port}/server_info"), 300,
            dagster, log,
        )  # fmt: skip
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield env, instance, dagster, log, f"http://127.0.0.1:{port}"
    finally:
        os.killpg(dagster.pid, signal.SIGINT)
        try:
            dagster.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stop_process_group(dagster)
        subprocess.run([BIN / "geo-busyness", "endpoint", "stop"], cwd=REPO, env=env, timeout=120)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def key(asset: str, city: str = REGINA) -> dg.AssetKey:
    return dg.AssetKey([city.replace("-", "_"), asset])


def materialized(
    instance: dg.DagsterInstance, asset: str, partition: str, city: str = REGINA
) -> dict | None:
    """Tags of the run that materialized ``asset[partition]`` of ``city`` most recently."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key(asset, city), asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    run = instance.get_run_by_id(records[0].run_id)
    return dict(run.tags) if run else {}


def champion_version(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(key("champion_model"))
    return str(event.asset_materialization.metadata["version"].value) if event else None


def test_new_days_are_processed_and_drift_retrains_through_the_gates(platform):
    env, instance, dagster, log, _ = platform
    first_champion = champion_version(instance)
    assert first_champion == "1"

    # A baseline day of each city and, with them (as after an outage of the export), the drifted
    # day land at once: both days flow through the same automation ticks.
    simulate(env, BASELINE_DAY, 1)
    simulate(env, BASELINE_DAY, 1, city=SECOND_CITY)
    simulate(env, DRIFT_DAY, 1, scenario="new_district")

    # 1. The baseline days: sensor → ingestion run → automation → features.
    day = BASELINE_DAY.isoformat()
    for city in (REGINA, SECOND_CITY):
        tags = wait_for(
            f"{city} raw_courier_pings[{day}] from the sensor",
            lambda city=city: materialized(instance, "raw_courier_pings", day, city), 300,
            dagster, log,
        )  # fmt: skip
        assert tags.get("dagster/sensor_name") == "landing_zone_sensor"
    tags = wait_for(
        f"busyness_features[{day}] by automation",
        lambda: materialized(instance, "busyness_features", day), 600, dagster, log,
    )  # fmt: skip
    assert tags.get("dagster/sensor_name") == "automation"
    # The second city's rows are its own: clean for it, not implausible for regina.
    clean = wait_for(
        f"{SECOND_CITY} clean_courier_pings[{day}]",
        lambda: instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=key("clean_courier_pings", SECOND_CITY), asset_partitions=[day]
            ),
            limit=1,
        ).records, 300, dagster, log,
    )[0].event_log_entry.asset_materialization.metadata  # fmt: skip
    assert clean["quarantined_share"].value < 0.1

    # 2. The drifted day: forecast and drift report by automation, then a retrain.
    day = DRIFT_DAY.isoformat()
    wait_for(
        f"drift_report[{day}]", lambda: materialized(instance, "drift_report", day), 900,
        dagster, log,
    )  # fmt: skip
    drift = (
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key("drift_report"), asset_partitions=[day]),
            limit=1,
        )
        .records[0]
        .event_log_entry.asset_materialization.metadata
    )
    assert drift["drift_share"].value > 0

    def finished_retrain():
        runs = instance.get_runs(
            filters=dg.RunsFilter(
                tags={"geo_busyness/trigger": "drift"},
                statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            )
        )
        return runs[0] if runs else None

    retrain = wait_for("a drift-triggered retrain to finish", finished_retrain, 900, dagster, log)
    assert retrain.tags["geo_busyness/drift_day"] == day
    assert retrain.tags["geo_busyness/city"] == REGINA
    evaluations = [
        record.event_log_entry.dagster_event.event_specific_data
        for record in instance.get_records_for_run(
            retrain.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
    ]
    checks = {evaluation.check_name: evaluation.passed for evaluation in evaluations}
    assert set(checks) == {
        "candidate_beats_every_baseline",
        "candidate_not_worse_than_champion",
        "candidate_predictions_are_sane",
    }
    address = f"http://127.0.0.1:{env['GEO_BUSYNESS_ENDPOINT_PORT']}"
    if all(checks.values()):
        # promoted: automation refreshes the forecast and redeploys the new champion
        assert retrain.status == dg.DagsterRunStatus.SUCCESS
        new_version = champion_version(instance)
        assert new_version != first_champion
        wait_for(
            f"the endpoint to serve version {new_version}",
            lambda: requests.get(f"{address}/ping", timeout=5).ok
            and _served_version(instance) == new_version,
            600, dagster, log,
        )  # fmt: skip
    else:
        # refused: the run failed on its blocking check and version 1 keeps serving
        assert retrain.status == dg.DagsterRunStatus.FAILURE
        failures = {
            record.event_log_entry.dagster_event.event_specific_data.error.cls_name
            for record in instance.get_records_for_run(
                retrain.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
            ).records
        }
        assert failures == {"DagsterAssetCheckFailedError"}
        assert champion_version(instance) == first_champion
        assert _served_version(instance) == first_champion
        assert requests.get(f"{address}/ping", timeout=5).ok


def _served_version(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("endpoint_deployment"))
    if event is None:
        return None
    return str(event.asset_materialization.metadata["cities"].value[REGINA]["model_version"])


# What a data engineer opens first, per group: each page shows its pictures inline.
PICTURES = {
    f"{REGINA}/hex_hourly_busyness": ["busyness map"],
    f"{REGINA}/model_evaluation": ["predicted vs actual", "error map"],
    f"{REGINA}/busyness_forecast": ["forecast map"],
    f"{REGINA}/drift_report": ["reference vs current distributions of the drifted columns"],
    f"{SECOND_CITY.replace('-', '_')}/hex_hourly_busyness": ["busyness map"],
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _keep_on_loopback(route, refused: list[str]) -> None:
    """No traffic to any non-loopback address: what the UI would fetch elsewhere is refused
    (and listed, so the test shows it)."""
    parts = urllib.parse.urlsplit(route.request.url)
    if parts.scheme in ("data", "blob") or parts.hostname in LOOPBACK_HOSTS:
        route.continue_()
    else:
        refused.append(route.request.url)
        route.abort()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.timeout(600)
def test_the_operator_sees_pictures_links_checks_and_the_endpoint_down_in_a_browser(
    platform, tmp_path_factory
):
    """Debian's chromium, driven by Playwright, over the instance the loop above left: the
    asset graph, each group's pictures on its asset page, every metadata link answering, the
    checks, a materialization launched from the UI, and the endpoint shown down once stopped.
    Screenshots go to ``<pytest basetemp>/screenshots*``."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium (Debian's `chromium` package; .ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    env, instance, dagster, log, ui = platform
    shots = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots in {shots}")
    refused: list[str] = []
    links: set[str] = set()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            # root in CI containers, a small /dev/shm, no GPU; no background updates or sync
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
        page.context.route("**/*", lambda route: _keep_on_loopback(route, refused))
        page.set_default_timeout(60_000)
        # expect() has its own 5 s default, too short for a panel of the UI on a loaded CI machine
        # (CI once saw the endpoint-down description appear just after it)
        expect.set_options(timeout=60_000)

        # 1. The asset graph loads, with every city's group.
        page.goto(f"{ui}/asset-groups")
        for group in (REGINA, SECOND_CITY.replace("-", "_"), "deployment"):
            expect(page.get_by_text(group, exact=True).first).to_be_visible()
        expect(page.get_by_text("fetching statuses")).to_have_count(0)
        page.screenshot(path=shots / "asset-graph.png")

        # 2. Each key asset page shows its pictures, loaded, at a readable size.
        for asset, pictures in PICTURES.items():
            page.goto(f"{ui}/assets/{asset}")
            for alt in pictures:
                picture = page.get_by_alt_text(alt).first
                expect(picture).to_be_visible()
                picture.scroll_into_view_if_needed()
                width = picture.evaluate("img => img.complete ? img.naturalWidth : 0")
                # readable: the pop-up of Markdown metadata showed a 297 px histogram
                assert width >= 400, f"{asset}: picture {alt!r} is {width} px wide"
                links.add(picture.get_attribute("src"))
            links.update(page.eval_on_selector_all("a[href^='http']", "as => as.map(a => a.href)"))
            page.screenshot(path=shots / f"{asset.replace('/', '__')}.png")
        page.goto(f"{ui}/assets/{REGINA}/champion_model")
        for key in ("mlflow_run", "mlflow_model_version", "model_card"):
            expect(page.get_by_text(key, exact=True).first).to_be_visible()
        expect(page.get_by_text("gates passed").first).to_be_visible()  # the card's summary
        page.screenshot(path=shots / "champion_model.png")
        champion_links = page.eval_on_selector_all("a[href^='http']", "as => as.map(a => a.href)")
        links.update(champion_links)
        # the model card: one page per champion, served by the report server
        card = next(url for url in champion_links if "/model_cards/" in url)
        page.goto(card)
        for text in ("Model card", "Promotion gates", "busiest hexagons", "same_hour_4w_mean"):
            expect(page.get_by_text(text).first).to_be_visible()
        page.screenshot(path=shots / "model-card.png", full_page=True)
        page.goto(f"{ui}/assets/endpoint_deployment")
        expect(page.get_by_text("ping", exact=True).first).to_be_visible()
        links.update(page.eval_on_selector_all("a[href^='http']", "as => as.map(a => a.href)"))

        # 3. Every link of the metadata answers: pictures and the Evidently report on the report
        #    server, MLflow runs on the MLflow UI, the endpoint's health (none is a file:// link).
        ours = sorted(url for url in links if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS)
        assert any(url.endswith(".html") for url in ours), ours  # the drift report
        assert any("/#/experiments/" in url for url in ours), ours  # an MLflow run
        assert {url: _status(url) for url in ours} == dict.fromkeys(ours, 200)

        # 4. The promotion gates are visible, as blocking checks, with their verdicts.
        page.goto(f"{ui}/assets/{REGINA}/model_evaluation?view=checks")
        expect(page.get_by_text("Checks (3)")).to_be_visible()  # long names show truncated
        expect(page.get_by_text("candidate_beats_every_baseline").first).to_be_visible()
        expect(page.get_by_text("blocking").first).to_be_visible()
        expect(page.get_by_text("vs the best baseline").first).to_be_visible()  # its verdict
        page.screenshot(path=shots / "model_evaluation-checks.png")

        # 5. The demo's runs are filed under their jobs (not as ad hoc runs): a day's data run
        #    and the training run each show on their job's page.
        for job in (f"{REGINA}__daily_data_job", "training_job"):
            [demo_run] = instance.get_runs(
                filters=dg.RunsFilter(job_name=job, tags={"geo_busyness/trigger": "cli"}), limit=1
            )
            page.goto(f"{ui}/locations/geo_busyness/jobs/{job}/runs")
            expect(page.get_by_text(demo_run.run_id[:8]).first).to_be_visible()
            page.screenshot(path=shots / f"job-{job}-runs.png")
        # ... and in the Overview timeline, which draws only runs with a code location origin
        # (both jobs run only in the demo's process here, never on the daemon).
        page.goto(f"{ui}/overview/activity/timeline")
        for job in (f"{REGINA}__daily_data_job", "training_job"):
            expect(page.get_by_text(job, exact=True).first).to_be_visible()
        page.screenshot(path=shots / "overview-timeline.png")

        # 6. A materialization launched from the UI runs on the daemon and succeeds.
        page.goto(f"{ui}/assets/{REGINA}/restaurants")
        page.get_by_role("button", name=re.compile(r"^materialization Materialize$")).click()
        launched = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
        expect(launched).to_be_visible()
        prefix = re.search(r"[0-9a-f]{8}", launched.inner_text()).group(0)

        def finished():
            for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(FINISHED))):
                if run.run_id.startswith(prefix):
                    return run
            return None

        run = wait_for(f"the UI's run {prefix} to finish", finished, 300, dagster, log)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        page.goto(f"{ui}/runs/{run.run_id}")
        expect(page.get_by_text("Success").first).to_be_visible()
        page.screenshot(path=shots / "ui-launched-run.png")

        # 7. The endpoint stops: the health sensor records it, and the asset page says so.
        # A tick during the stop may already record it down (or a half-stopped endpoint, which
        # a later tick corrects): what counts is the newest observation since the stop began.
        stopping = time.time()
        subprocess.run(
            [BIN / "geo-busyness", "endpoint", "stop"], cwd=REPO, env=env, timeout=120, check=True
        )
        wait_for(
            "the health sensor to record the endpoint down",
            lambda: _latest_health(instance, after=stopping) is False, 120, dagster, log,
        )  # fmt: skip
        page.goto(f"{ui}/assets/endpoint_deployment?view=events")
        expect(page.get_by_text(re.compile("NOT serving")).first).to_be_visible()
        page.screenshot(path=shots / "endpoint-down.png")
        browser.close()
    assert refused == []


FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)


def _latest_health(instance: dg.DagsterInstance, after: float) -> bool | None:
    """``serving`` of the newest observation of the endpoint, None if none came after ``after``."""
    records = instance.fetch_observations(dg.AssetKey("endpoint_deployment"), limit=1).records
    if not records or records[0].timestamp <= after:
        return None
    return records[0].event_log_entry.asset_observation.metadata["serving"].value
