"""A bounded, seeded HTTP fuzz campaign against the real server process.

A few thousand requests from a small seeded generator, in well under a minute: JSON and CSV
bodies mutated field by field (wrong types, huge and non-finite numbers, out-of-range times,
unknown keys, nesting, broken encodings, odd line endings and header spellings), odd methods,
paths and headers over keep-alive connections, and malformed HTTP framing on raw sockets
(garbage, header floods, bad lengths and chunks, truncated and pipelined requests). Meanwhile
heavy bodies run and ``/ping`` is timed. Asserted: no 5xx, every 4xx names its field, nothing
hangs (a per-request timeout), the server's memory stays bounded (``/proc`` RSS before and
after, and its peak) and ``/ping`` answers quickly throughout. The campaign's numbers are
printed as one JSON line (``pytest -s``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import http.client
import json
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

import h3
import pandas as pd
import pytest

from geo_busyness.stack.services import LOOPBACK, free_port
from geo_busyness_tests.integration.test_server import (
    ping_seconds,
    rss_mb,
    running_server,
    wait_for_ping,
)

pytestmark = pytest.mark.integration

SEED = 20250303
HTTP_CASES = 3_000
RAW_CASES = 600
REQUEST_TIMEOUT_S = 15.0  # no single answer may take longer (the deadlines below are 2 s)
DEADLINE_S = 2
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from geo_busyness.serving.demo import write_demo_bundle

    bundle_dir = write_demo_bundle(
        tmp_path_factory.mktemp("fuzz") / "bundle", rings=2, hours=6, n_estimators=60
    )
    port = free_port()
    log = tmp_path_factory.mktemp("fuzz-log") / "serve.log"
    args = [
        *("--model-dir", str(bundle_dir), "--host", LOOPBACK, "--port", str(port)),
        *("--header-timeout", str(DEADLINE_S), "--body-timeout", str(DEADLINE_S)),
        *("--keep-alive", "1"),  # so a raw exchange that keeps the connection ends soon
    ]
    with running_server(log, args) as process:
        wait_for_ping(port, process, log)
        snapshot = pd.read_parquet(bundle_dir / "features.parquet")
        yield port, process, log, snapshot


# ---------------------------------------------------------------------------------------------
# The generator


class Generator:
    """Requests built from a valid one by a few seeded mutations each."""

    def __init__(self, rng: random.Random, snapshot: pd.DataFrame) -> None:
        self.rng = rng
        self.cells = snapshot["h3_cell"].tolist()
        self.hours = [t.isoformat() for t in snapshot["hour_start"]]

    def choice(self, items):
        return items[self.rng.randrange(len(items))]

    def nested(self, depth: int):
        value = self.choice([1, "x", None, 2.5, True])
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"k": value}
        return value

    def odd_value(self):
        r = self.rng
        pool = [
            None,
            True,
            False,
            0,
            -1,
            2**53 + 1,
            -(2**63),
            2**64,
            1e308,
            -1e-308,
            float("nan"),
            float("inf"),
            "",
            " ",
            "x" * r.randrange(1, 3000),
            "\u0000",
            "\ud800",
            "名前",
            "😀" * 10,
            [],
            {},
            [1, 2],
            {"a": 1},
            self.nested(r.randrange(1, 40)),
        ]
        return self.choice(pool)

    def odd_time(self) -> str:
        return self.choice(
            [
                "1677-09-21T00:12:44Z",
                "1677-09-21T01:00:00Z",
                "2262-04-11T23:59:59Z",
                "2262-04-12T00:00:00Z",
                "9999-12-31T23:59:59Z",
                "0001-01-01T00:00:00",
                "2025-03-03T10:00:00+25:00",
                "2025-13-01T00:00:00Z",
                "2025-02-30T10:00:00Z",
                "2025-03-03T10:00:00.123456789Z",
                "2025-03-03",
                "20250303T100000Z",
                "2025-03-03T10:00:00-06:00",
                "2025-03-03 10:00",
                "next tuesday",
                "",
                "T" * 500,
                self.choice(self.hours).replace("+00:00", self.choice(["Z", "", "+05:30"])),
            ]
        )

    def odd_cell(self) -> str:
        cell = self.choice(self.cells)
        return self.choice(
            [
                cell,
                cell.upper(),
                f" {cell} ",
                h3.latlng_to_cell(50.45, -104.6, 9),
                h3.latlng_to_cell(-33.9, 151.2, 7),
                "0",
                "f" * 16,
                "8" * 15,
                "87" + "".join(self.choice("0123456789abcdefxyz") for _ in range(13)),
                "",
            ]
        )

    def instance(self) -> dict:
        r = self.rng
        if r.random() < 0.6:
            item: dict = {"h3_cell": self.choice(self.cells), "timestamp": self.choice(self.hours)}
        else:
            lat, lon = h3.cell_to_latlng(self.choice(self.cells))
            item = {"lat": lat, "lon": lon, "timestamp": self.choice(self.hours)}
        for _ in range(r.choice([0, 0, 0, 1, 2])):  # mutate our fields
            name = self.choice(["h3_cell", "lat", "lon", "timestamp"])
            roll = r.random()
            if roll < 0.15:
                item.pop(name, None)
            elif name == "timestamp" and roll < 0.6:
                item[name] = self.odd_time()
            elif name == "h3_cell" and roll < 0.6:
                item[name] = self.odd_cell()
            elif name in ("lat", "lon") and roll < 0.6:
                item[name] = self.choice([91, -180.0001, 1e400, 5, "50.4", 2**70])
            else:
                item[name] = self.odd_value()
        for _ in range(r.choice([0, 0, 1, 3])):  # unknown fields, any name, any value
            item[f"extra_{r.randrange(10**6)}"] = self.odd_value()
        return item

    def json_body(self) -> bytes:
        r = self.rng
        instances = [self.instance() for _ in range(r.choice([1, 1, 2, 5, 20, 200]))]
        roll = r.random()
        if roll < 0.04:
            document = self.odd_value()
        elif roll < 0.08:
            document = {"instances": self.odd_value()}
        elif roll < 0.1:
            document = {"instances": [*instances, self.odd_value()]}
        else:
            document = {"instances": instances}
        text = json.dumps(document)
        roll = r.random()
        if roll < 0.05:  # integers longer than Python converts
            text = text.replace("1", "1" + "7" * 4400, 1) if "1" in text else text
        elif roll < 0.1:  # deep nesting in an ignored field
            depth = r.choice([20, 29, 30, 33, 100, 900, 5000])
            text = text.replace('{"', '{"deep": ' + "[" * depth + "]" * depth + ', "', 1)
        elif roll < 0.14:
            text = text[: r.randrange(len(text) + 1)]  # truncated
        elif roll < 0.17:
            text = text.replace('"timestamp"', '"timestamp": 1, "timestamp"', 1)  # duplicate
        elif roll < 0.2:
            text = text + self.choice(["garbage", "}", " ", "\n\n", "\u0000"])
        data = text.encode("utf-8", "surrogatepass")
        if r.random() < 0.04:
            data = b"\xef\xbb\xbf" + data
        if r.random() < 0.04:
            at = r.randrange(len(data) + 1)
            data = data[:at] + self.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"]) + data[at:]
        return data

    def csv_body(self) -> bytes:
        r = self.rng
        by_cell = r.random() < 0.6
        names = ["h3_cell", "timestamp"] if by_cell else ["lat", "lon", "timestamp"]
        if r.random() < 0.3:
            names = [
                self.choice([n.upper(), f" {n} ", n.title(), f'"{n}"', f"\t{n}"]) for n in names
            ]
        if r.random() < 0.1:
            names.append(self.choice(["extra", "h3_cell", "timestamp", ""]))
        if r.random() < 0.05:
            names.pop(r.randrange(len(names)))
        rows = []
        for _ in range(r.choice([1, 2, 10, 300])):
            if by_cell:
                row = [self.choice(self.cells), self.choice(self.hours)]
            else:
                lat, lon = h3.cell_to_latlng(self.choice(self.cells))
                row = [repr(lat), repr(lon), self.choice(self.hours)]
            if r.random() < 0.2:
                at = r.randrange(len(row))
                row[at] = self.choice(
                    [
                        "",
                        "nan",
                        "inf",
                        "-0",
                        "9" * 5000,
                        "1e400",
                        '"quoted"',
                        '"unterminated',
                        "a,b",
                        self.odd_time(),
                        self.odd_cell(),
                    ]
                )
            if r.random() < 0.03:
                row.append("extra")
            rows.append(",".join(row))
        newline = self.choice(["\n", "\r\n", "\r"])
        text = newline.join([",".join(names), *rows])
        if r.random() < 0.7:
            text += newline
        if r.random() < 0.05:
            text = text.replace(newline, "\n", r.randrange(3))  # mixed endings
        data = text.encode()
        roll = r.random()
        if roll < 0.04:
            data = b"\xef\xbb\xbf" + data
        elif roll < 0.08:
            at = r.randrange(len(data) + 1)
            data = data[:at] + self.choice([b"\xff", b"\x00", b"\r\r\n", b'"']) + data[at:]
        elif roll < 0.1:
            data = b""
        return data

    def http_request(self) -> tuple[str, str, bytes, dict[str, str]]:
        r = self.rng
        roll = r.random()
        if roll < 0.05:
            return "GET", "/ping", b"", {}
        if roll < 0.08:
            method, path = self.choice(
                [
                    ("GET", "/invocations"),
                    ("PUT", "/invocations"),
                    ("POST", "/ping"),
                    ("GET", "/nowhere"),
                    ("GET", "/ping?x=%00%ff"),
                    ("DELETE", "/"),
                    ("GET", "/%2e%2e/etc/passwd"),
                ]
            )
            return method, path, b"", {}
        as_csv = r.random() < 0.35
        body = self.csv_body() if as_csv else self.json_body()
        content_type = "text/csv" if as_csv else "application/json"
        if r.random() < 0.15:
            content_type = self.choice(
                [
                    "application/json; charset=utf-8",
                    "Application/JSON",
                    "TEXT/CSV; header=present",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    ";;;",
                    "",
                ]
            )
        headers = {"Content-Type": content_type}
        if r.random() < 0.3:
            headers["Accept"] = self.choice(
                [
                    "*/*",
                    "text/csv",
                    "application/json",
                    "text/csv;q=0, application/json",
                    "image/png",
                    ";;;,,,",
                    "text/*;q=0",
                    "x" * 2000,
                ]
            )
        if r.random() < 0.2:
            headers["X-Amzn-SageMaker-Inference-Id"] = self.choice(["fuzz", "x" * 3000, "é-ü", " "])
        return "POST", "/invocations", body, headers

    def raw_request(self) -> bytes:
        """Malformed or unusual HTTP framing; most ask to close, so the server ends each."""
        r = self.rng
        good = b'{"instances": [{"h3_cell": "%s", "timestamp": "%s"}]}' % (
            self.choice(self.cells).encode(),
            self.choice(self.hours).encode(),
        )
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        close = b"Connection: close\r\n"
        cases = [
            lambda: bytes(r.randrange(256) for _ in range(r.randrange(1, 400))),
            lambda: b"GET /ping HTTP/9.9\r\n\r\n",
            lambda: b"GET /ping\r\n\r\n",
            lambda: b"get /ping HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n",
            lambda: b"GET /" + b"a" * r.choice([100, 40_000, 70_000]) + b" HTTP/1.1\r\n\r\n",
            lambda: b"GET /p\x00ing HTTP/1.1\r\n\r\n",
            lambda: (
                b"GET /ping HTTP/1.1\r\n"
                + b"".join(b"X-%d: v\r\n" % i for i in range(r.choice([50, 101, 5000])))
                + close
                + b"\r\n"
            ),
            lambda: (
                b"GET /ping HTTP/1.1\r\nX-Big: " + b"b" * r.choice([1000, 40_000]) + b"\r\n\r\n"
            ),
            lambda: (
                head
                + b"Content-Length: %b\r\n" % self.choice([b"-1", b"abc", b"1e3", b""])
                + close
                + b"\r\n"
                + good
            ),
            lambda: head + b"Content-Length: 5\r\nContent-Length: 7\r\n" + close + b"\r\n" + good,
            lambda: (
                head
                + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(good)
                + good
            ),
            lambda: (
                head
                + b"Transfer-Encoding: chunked\r\n"
                + close
                + b"\r\n"
                + self.choice(
                    [b"zz\r\n", b"ffffffffffffffffff\r\n", b"5;ext=\x01\r\nhello\r\n0\r\n\r\n"]
                )
            ),
            lambda: (
                head
                + b"Transfer-Encoding: chunked\r\n"
                + close
                + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(good), good)
            ),
            lambda: b"GET /ping HTTP/1.1\nHost: x\n" + close.replace(b"\r", b"") + b"\n",
            lambda: b"GET /ping HTTP/1.1\r\nHost: x\r\n folded\r\n" + close + b"\r\n",
            lambda: b"GET /ping HTTP/1.1\r\nNoColon\r\n" + close + b"\r\n",
            lambda: b"GET /ping HTTP/1.1\r\nHost : x\r\n" + close + b"\r\n",
            lambda: (head + b"Content-Length: %d\r\n" % len(good) + close + b"\r\n" + good)[
                : r.randrange(20, 150)
            ],  # truncated: the deadlines end it
            lambda: (
                (b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" * r.randrange(2, 5))
                + b"GET /ping HTTP/1.1\r\nHost: x\r\n"
                + close
                + b"\r\n"
            ),  # pipelined
            lambda: (
                head
                + b"Expect: 100-continue\r\nContent-Length: %d\r\n" % len(good)
                + close
                + b"\r\n"
                + good
            ),
            lambda: (
                b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                + self.choice([b"Upgrade: websocket\r\n", b"Upgrade: h2c\r\n"])
                + b"\r\n"
            ),
            lambda: b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            lambda: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            lambda: b"\r\n\r\n\r\n",
            lambda: head + b"Content-Length: 99999999999\r\n" + close + b"\r\n" + good,
            lambda: head + b"Content-Length: %d\r\n" % len(good) + close + b"\r\n" + good,
        ]
        return self.choice(cases)()


# ---------------------------------------------------------------------------------------------
# Running it


def send_http(connection_box: list, port: int, method, path, body, headers):
    """One request on a kept-alive connection (reopened when the server closed it)."""
    for attempt in range(2):
        if connection_box[0] is None:
            connection_box[0] = http.client.HTTPConnection(
                LOOPBACK, port, timeout=REQUEST_TIMEOUT_S
            )
        connection = connection_box[0]
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                connection_box[0] = None
            return response.status, content
        except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
            connection.close()
            connection_box[0] = None
            if attempt:
                raise
    raise AssertionError("unreachable")


def send_raw(port: int, data: bytes) -> tuple[int | None, float]:
    """The first status line the server answers ``data`` with (None: closed without one)."""
    started = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=REQUEST_TIMEOUT_S) as sock:
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            sock.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):  # a timeout here is a hang: it raises
                chunks.append(chunk)
    statuses = [int(code) for code in STATUS_LINE.findall(b"".join(chunks))]
    return max(statuses, default=None), time.perf_counter() - started


def heavy_bodies(gen: Generator) -> list[tuple[bytes, int]]:
    """Large bodies near the limits, with the status each must get."""
    cell, hour = gen.cells[0], gen.hours[0]
    one = {"h3_cell": cell, "timestamp": hour}
    unknown = [{**one, f"k{i}": i} for i in range(12_000)]
    valid = [{"h3_cell": gen.cells[i % len(gen.cells)], "timestamp": hour} for i in range(50_000)]

    def with_ignored(text: str) -> bytes:
        return json.dumps({"instances": [one], "x": 0}).replace('"x": 0', '"x": ' + text).encode()

    block = "[" * 29 + "0" + "]" * 29  # 31 levels with the envelope: just allowed
    return [
        (json.dumps({"instances": unknown}).encode(), 200),  # 0.9 MB, 12,000 unknown keys
        (json.dumps({"instances": valid}).encode(), 200),  # 3.5 MB, the most instances
        (with_ignored("[" + ",".join([block] * 80_000) + "]"), 413),  # 2.3M arrays, 4.8 MB
        (with_ignored("[" + ",".join([block] * 6_800) + "]"), 200),  # 197k arrays: accepted
        (with_ignored("[" + "0," * 2_500_000 + "0]"), 413),  # 2.5M numbers, 5 MB
        (with_ignored("[" + "0," * 990_000 + "0]"), 200),  # 990k numbers: accepted
        (with_ignored(json.dumps(['é\\"[{\\\\' * 40] * 7_000)), 200),  # escapes, 4.5 MB
        (("h3_cell,timestamp\r" + f"{cell},{hour}\r" * 45_000).encode(), 200),  # CR-only CSV
    ]


@pytest.fixture(scope="module")
def fuzz_proxy(fuzz_server, tmp_path_factory):
    """The local front proxy in front of the fuzz server, with the same deadlines."""
    server_port, _process, _log, _snapshot = fuzz_server
    port = free_port()
    run_dir = tmp_path_factory.mktemp("fuzz-proxy")
    log = run_dir / "proxy.log"
    command = [
        sys.executable,
        *("-m", "geo_busyness.deploy.proxy", "--listen-host", LOOPBACK),
        *("--listen-port", str(port), "--control-socket", str(run_dir / "c.sock")),
        *("--upstream", f"{LOOPBACK}:{server_port}"),
        *("--header-timeout", str(DEADLINE_S), "--body-timeout", str(DEADLINE_S)),
        *("--keep-alive", "1"),  # as the server's: a raw exchange that keeps the connection
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for_ping(port, process, log)
        yield port, process, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(params=["server", "proxy"])
def fuzz_target(request, fuzz_server):
    """(port clients use, processes whose memory and logs are checked, snapshot)."""
    server_port, server_process, server_log, snapshot = fuzz_server
    processes = [(server_process, server_log)]
    if request.param == "server":
        return server_port, processes, snapshot
    proxy_port, proxy_process, proxy_log = request.getfixturevalue("fuzz_proxy")
    return proxy_port, [*processes, (proxy_process, proxy_log)], snapshot


@pytest.mark.timeout(300)
def test_fuzz_campaign(fuzz_target):
    port, processes, snapshot = fuzz_target
    gen = Generator(random.Random(SEED), snapshot)
    for _ in range(50):  # warm up before the baseline
        ping_seconds(port)
    rss_before = {process.pid: rss_mb(process.pid) for process, _log in processes}
    started = time.perf_counter()

    # /ping, timed every few ms while the campaign and the heavy bodies run
    pings: list[float] = []
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set():
            pings.append(ping_seconds(port))
            time.sleep(0.005)

    heavy_cases = heavy_bodies(gen)  # built before the clocks run: the client has a GIL too
    heavy_results: list[tuple[int, float, int]] = []

    def heavy() -> None:
        for body, _ in heavy_cases:
            kind = "text/csv" if body.startswith(b"h3_cell") else "application/json"
            t0 = time.perf_counter()
            status, _ = send_http(
                [None], port, "POST", "/invocations", body, {"Content-Type": kind}
            )
            heavy_results.append((status, time.perf_counter() - t0, len(body)))

    threads = [threading.Thread(target=pinger), threading.Thread(target=heavy)]
    for thread in threads:
        thread.start()

    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    unnamed: list[tuple[int, bytes]] = []
    box: list = [None]
    try:
        for _ in range(HTTP_CASES):
            method, path, body, headers = gen.http_request()
            t0 = time.perf_counter()
            status, content = send_http(box, port, method, path, body, headers)
            latencies.append(time.perf_counter() - t0)
            statuses[status] += 1
            assert status < 500, (method, path, headers, body[:300], content[:500])
            if 400 <= status < 500:
                error = json.loads(content)["error"]
                if "field" not in error:
                    unnamed.append((status, content[:300]))

        raw_statuses: collections.Counter = collections.Counter()
        raw_latencies: list[float] = []
        raw_cases = [gen.raw_request() for _ in range(RAW_CASES)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            for data, (status, seconds) in zip(
                raw_cases, pool.map(lambda d: send_raw(port, d), raw_cases), strict=True
            ):
                raw_statuses[status if status is not None else "closed"] += 1
                raw_latencies.append(seconds)
                assert status is None or status < 500, data[:300]
    finally:
        threads[1].join(timeout=120)
        stop.set()
        threads[0].join(timeout=30)
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    rss = {
        process.pid: {
            "before": round(rss_before[process.pid]),
            "after": round(rss_mb(process.pid)),
            "peak": round(rss_mb(process.pid, "VmHWM")),
        }
        for process, _log in processes
    }

    summary = {
        "http_requests": HTTP_CASES,
        "http_statuses": dict(sorted(statuses.items())),
        "raw_requests": RAW_CASES,
        "raw_statuses": {str(k): v for k, v in sorted(raw_statuses.items(), key=str)},
        "seconds": round(elapsed, 1),
        "http_latency_ms": {
            "p50": round(statistics.median(latencies) * 1e3, 2),
            "p99": round(sorted(latencies)[int(len(latencies) * 0.99)] * 1e3, 2),
            "max": round(max(latencies) * 1e3, 1),
        },
        "raw_max_s": round(max(raw_latencies), 2),
        "heavy": [{"status": s, "seconds": round(t, 2), "bytes": n} for s, t, n in heavy_results],
        "pings": len(pings),
        "ping_max_ms": round(max(pings) * 1e3, 1),
        "ping_p99_ms": round(sorted(pings)[int(len(pings) * 0.99)] * 1e3, 1),
        "rss_mb": list(rss.values()),  # the server, then the proxy
    }
    print("fuzz summary:", json.dumps(summary))

    assert not unnamed, unnamed[:5]
    assert [s for s, _, _ in heavy_results] == [s for _, s in heavy_cases], heavy_results
    assert max(t for _, t, _ in heavy_results) < 10
    assert statuses[200] > HTTP_CASES // 10  # the generator does reach the model
    assert max(latencies) < REQUEST_TIMEOUT_S
    assert max(raw_latencies) < 2 * DEADLINE_S + 3  # the deadlines end every stalled case
    assert max(pings) < 1.0, f"/ping took {max(pings):.3f}s"
    for process, log in processes:
        assert rss[process.pid]["after"] - rss[process.pid]["before"] < 150, summary["rss_mb"]
        # the peak of the server may come from the other campaign: bounded, not growing
        assert rss[process.pid]["peak"] - rss[process.pid]["before"] < 600, summary["rss_mb"]
        assert process.poll() is None
        assert "Traceback" not in log.read_text()


# ---------------------------------------------------------------------------------------------
# Must-answer cases: here a reset or a closed connection without a status line fails


def answer_raw(port: int, data: bytes) -> tuple[int | None, str]:
    """(the status the target answers ``data`` with, or None; what went wrong, if anything).
    Unlike :func:`send_raw`, a reset before a status line is reported, not counted as closed."""
    chunks: list[bytes] = []
    problem = ""
    with socket.create_connection((LOOPBACK, port), timeout=REQUEST_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
        except OSError as error:  # refused mid-send: the answer may still be waiting
            problem = f"send: {error!r}"
        try:
            while chunk := sock.recv(65536):  # a timeout here is a hang: it raises
                chunks.append(chunk)
        except ConnectionError as error:
            problem = f"{problem}; recv: {error!r}".lstrip("; ")
    match = STATUS_LINE.match(b"".join(chunks))
    if match is None:
        return None, problem or f"no status line in {b''.join(chunks)[:200]!r}"
    return int(match.group(1)), problem


_POST = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
MUST_ANSWER = {
    "5000-headers": (
        b"GET /ping HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        + b"Connection: close\r\n\r\n",
        431,
    ),
    "huge-length": (
        _POST + b"Content-Length: 99999999999\r\nConnection: close\r\n\r\n" + b'{"instances": []}',
        413,
    ),
    "bad-chunk": (_POST + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n", 400),
    # httptools refuses bare-LF line ends outright; a lenient parser would have to wait for the
    # 100 bytes, so 408 after the body deadline. Either way a 4xx, never a hang or a reset.
    "bare-lf-lying-length": (
        b"POST /invocations HTTP/1.1\nHost: x\nContent-Length: 100\n\n{}",
        400,
    ),
}
MUST_ANSWER_ROUNDS = 10  # a reset that happens one time in a few shows up too


@pytest.mark.timeout(180)
def test_malformed_and_oversized_requests_are_answered_not_reset(fuzz_target):
    port, processes, _snapshot = fuzz_target
    answers: dict[str, collections.Counter] = {name: collections.Counter() for name in MUST_ANSWER}
    failures: list[tuple[str, int | None, str]] = []
    slowest = 0.0
    for _ in range(MUST_ANSWER_ROUNDS):
        for name, (data, expected) in MUST_ANSWER.items():
            t0 = time.perf_counter()
            status, problem = answer_raw(port, data)
            slowest = max(slowest, time.perf_counter() - t0)
            answers[name][status] += 1
            if status != expected:
                failures.append((name, status, problem))
    print(
        "must-answer:",
        json.dumps({name: dict(counts) for name, counts in answers.items()}),
        f"slowest {slowest * 1e3:.1f} ms",
    )
    assert failures == [], failures[:8]
    assert slowest < DEADLINE_S + 3
    for process, log in processes:
        assert process.poll() is None
        assert "Traceback" not in log.read_text()


# ---------------------------------------------------------------------------------------------
# A 200 MB chunked upload through the proxy process

UPLOAD_BYTES = 200 * 1024 * 1024
UPLOAD_CHUNK = b"a" * 65536


def _reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


@pytest.mark.timeout(120)
def test_a_200mb_chunked_upload_through_the_proxy_is_a_413_early_and_memory_stays_flat(
    fuzz_proxy,
):
    import select

    port, process, log = fuzz_proxy
    ping_seconds(port)
    pid = process.pid
    before = rss_mb(pid)
    hwm_reset = _reset_peak_rss(pid)
    samples = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            samples.append(rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent = 0
    sent_at_answer = None  # bytes of body out when the answer arrived
    answer = b""
    answered_after_s = None
    cut_off = ""  # how the proxy ended a client that went on sending after the 413
    started = time.perf_counter()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=REQUEST_TIMEOUT_S) as sock:
            sock.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            frame = b"%x\r\n%s\r\n" % (len(UPLOAD_CHUNK), UPLOAD_CHUNK)  # reused: O(64 KB)
            # A client that ignores the answer: the whole 200 MB, unless the proxy closes first.
            try:
                while sent < UPLOAD_BYTES:
                    if sent_at_answer is None and select.select([sock], [], [], 0)[0]:
                        sent_at_answer = sent
                        answered_after_s = time.perf_counter() - started
                        answer = sock.recv(65536)  # read now: a later reset could drop it
                    sock.sendall(frame)
                    sent += len(UPLOAD_CHUNK)
                sock.sendall(b"0\r\n\r\n")
            except OSError as error:
                cut_off = type(error).__name__
            if sent_at_answer is None:  # the answer came after the last chunk
                sent_at_answer = sent
                deadline = time.monotonic() + REQUEST_TIMEOUT_S
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                answered_after_s = time.perf_counter() - started
    finally:
        sent_s = time.perf_counter() - started
        stop.set()
        sampler.join(timeout=10)
    peak_sampled = max(samples)
    peak_hwm = rss_mb(pid, "VmHWM")
    after = rss_mb(pid)
    result = {
        "status_line": answer.split(b"\r\n", 1)[0].decode("latin-1"),
        "sent_mb_before_answer": round(sent_at_answer / 2**20, 1),
        "answered_after_s": round(answered_after_s, 3),
        "sent_mb_in_all": round(sent / 2**20, 1),
        "cut_off_by_proxy": cut_off or None,
        "seconds": round(sent_s, 2),
        "proxy_rss_mb": {
            "before": round(before, 1),
            "peak_sampled": round(peak_sampled, 1),
            "peak_vmhwm": round(peak_hwm, 1) if hwm_reset else None,
            "after": round(after, 1),
        },
        "rss_samples": len(samples),
    }
    print("200 MB upload:", json.dumps(result))

    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent_at_answer < 64 * 2**20, f"{sent_at_answer / 2**20:.0f} MB went out before the 413"
    peak = max(peak_sampled, peak_hwm) if hwm_reset else peak_sampled
    assert peak - before < 100, result
    assert ping_seconds(port) < 1.0
    assert process.poll() is None
    assert "Traceback" not in log.read_text()
