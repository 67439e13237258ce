"""The front proxy's HTTP handling, limits and switch/drain, in-process on loopback (port 0).

Each test runs the proxy (uvicorn with the guarded protocol, as ``python -m
geo_busyness.deploy.proxy`` runs it) and fake upstream servers on one asyncio loop; clients
speak raw HTTP/1.1 so framing (chunked, close-delimited, keep-alive) is checked byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from geo_busyness.deploy.proxy import (
    ProxyLimits,
    ReverseProxy,
    handle_control,
    http_server,
    listen,
)
from geo_busyness.serving.protocol import ConnectionLimits

pytestmark = pytest.mark.unit

POST = (
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


@contextlib.asynccontextmanager
async def running(proxy: ReverseProxy, connection: ConnectionLimits | None = None):
    """The proxy served by uvicorn on a free port, for the block; yields the port."""
    listener = listen("127.0.0.1", 0)
    server = http_server(proxy, connection or ConnectionLimits(), grace_seconds=1)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    await until(lambda: server.started, "the proxy listens")
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        await proxy.close()


async def start_upstream(respond) -> tuple[asyncio.Server, str]:
    """A fake model server; ``respond(request_number_on_connection, request_bytes)`` returns
    the raw response bytes, or None to close the connection without answering."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                count += 1
                answer = await respond(count, head + body)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def json_response(payload: dict, extra: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def until(condition, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the event loop until it holds; fail naming ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what}")
        await asyncio.sleep(0.01)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length or chunked response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += chunk[:-2]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head, await reader.readexactly(int(line.split(b":")[1]))
    return head, await reader.read()


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_without_upstream_the_proxy_answers_503_and_keeps_the_connection():
    async def scenario():
        async with running(ReverseProxy()) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(2):
                writer.write(POST)
                head, body = await read_response(reader)
                assert head.startswith(b"HTTP/1.1 503"), head
                assert json.loads(body)["error"]["message"] == "no model server is deployed"
            writer.close()

    run(scenario())


def test_an_unreachable_upstream_is_a_502_that_does_not_name_the_internal_port():
    async def scenario():
        proxy = ReverseProxy(ProxyLimits(connect_timeout_s=2))
        upstream, address = await start_upstream(None)
        upstream.close()
        await upstream.wait_closed()
        proxy.switch(address)
        async with running(proxy) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(POST)
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 502"), head
            assert "not answering" in json.loads(body)["error"]["message"]
            assert address.split(":")[1].encode() not in body, "internal port leaked"
            writer.close()

    run(scenario())


def test_a_slow_upstream_is_a_504_after_the_response_timeout():
    async def respond(number, request):
        await asyncio.sleep(30)

    async def scenario():
        proxy = ReverseProxy(ProxyLimits(response_timeout_s=0.3))
        upstream, address = await start_upstream(respond)
        proxy.switch(address)
        async with running(proxy) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(POST)
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 504"), head
            assert "did not answer within 0.3 s" in json.loads(body)["error"]["message"]
            writer.close()
        upstream.close()

    run(scenario())


def test_chunked_and_close_delimited_responses_are_relayed_intact():
    async def respond(number, request):
        if b"/chunked" in request:
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"

    async def scenario():
        proxy = ReverseProxy()
        upstream, address = await start_upstream(respond)
        proxy.switch(address)
        async with running(proxy) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for path in (b"/chunked", b"/chunked", b"/close"):  # all on one client connection
                writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = await read_response(reader)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert body == (b"until close" if path == b"/close" else b"hello world")
            writer.close()
        upstream.close()

    run(scenario())


def test_a_pooled_connection_the_server_dropped_is_retried_on_a_fresh_one():
    dropped = []

    async def respond(number, request):
        if number == 2 and not dropped:  # closed the kept-alive connection as the request came
            dropped.append(number)
            return None
        return json_response({"n": number})

    async def scenario():
        proxy = ReverseProxy(ProxyLimits(upstream_idle_s=60))
        upstream, address = await start_upstream(respond)
        proxy.switch(address)
        async with running(proxy) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for _ in range(3):
                writer.write(POST)
                head, body = await read_response(reader)
                assert head.startswith(b"HTTP/1.1 200"), (head, body)
                answers.append(json.loads(body)["n"])
            assert dropped == [2]
            assert answers == [1, 1, 2], "second request retried on a new upstream connection"
            writer.close()
        upstream.close()

    run(scenario())


def test_switch_sends_new_requests_to_the_new_upstream_and_drain_waits_for_the_old():
    release_old = asyncio.Event()

    async def old(number, request):
        await release_old.wait()
        return json_response({"version": "old"})

    async def new(number, request):
        return json_response({"version": "new"})

    async def scenario():
        proxy = ReverseProxy()
        old_server, old_address = await start_upstream(old)
        new_server, new_address = await start_upstream(new)
        proxy.switch(old_address)
        async with running(proxy) as port:
            slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
            slow_writer.write(POST)
            await until(
                lambda: proxy.upstreams[old_address].in_flight == 1, "the slow request runs"
            )

            assert proxy.switch(new_address) == old_address
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(POST)
            _head, body = await read_response(reader)
            assert json.loads(body) == {"version": "new"}

            drain = asyncio.create_task(proxy.drain(old_address, timeout=10))
            released_when_drained = []
            drain.add_done_callback(lambda _: released_when_drained.append(release_old.is_set()))
            release_old.set()
            _head, body = await read_response(slow_reader)
            assert json.loads(body) == {"version": "old"}, "the in-flight request must finish"
            assert await drain == {"ok": True, "drained": True, "in_flight": 0}
            assert released_when_drained == [True], "the drain finished before the request did"
            assert old_address not in proxy.upstreams

            refused = await proxy.drain(new_address, timeout=1)
            assert refused["ok"] is False and "active upstream" in refused["error"]
            for item in (writer, slow_writer):
                item.close()
        for item in (old_server, new_server):
            item.close()

    run(scenario())


def test_expect_100_continue_is_answered_by_the_proxy():
    async def respond(number, request):
        assert b"expect" not in request.lower(), "Expect must not reach the server"
        return json_response({"ok": True})

    async def scenario():
        proxy = ReverseProxy()
        upstream, address = await start_upstream(respond)
        proxy.switch(address)
        async with running(proxy) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 2\r\n\r\n"
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"{}")
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"ok": True}
            writer.close()
        upstream.close()

    run(scenario())


def test_control_commands_and_errors(tmp_path):
    async def scenario():
        proxy = ReverseProxy()
        path = str(tmp_path / "c.sock")
        control = await asyncio.start_unix_server(
            lambda r, w: handle_control(proxy, r, w), path=path
        )
        reader, writer = await asyncio.open_unix_connection(path)

        async def ask(command: dict) -> dict:
            writer.write(json.dumps(command).encode() + b"\n")
            return json.loads(await reader.readline())

        assert (await ask({"op": "switch", "upstream": "127.0.0.1:9"}))["previous"] is None
        status = await ask({"op": "status"})
        assert status["upstream"] == "127.0.0.1:9" and status["ok"]
        assert "unknown op" in (await ask({"op": "explode"}))["error"]
        assert "bad command" in (await ask({"op": "switch", "upstream": "no-port"}))["error"]
        writer.close()
        control.close()

    run(scenario())


# -- what used to hang or exhaust the hand-written proxy ----------------------------------


async def exchange(port: int, request: bytes, then_send: bytes = b"") -> tuple[bytes, bytes]:
    """Send ``request``, read one answer (the connection must then close), return it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    if then_send:
        with contextlib.suppress(ConnectionError):
            writer.write(then_send)
    head, body = await read_response(reader)
    writer.close()
    return head, body


def never_called(number, request):
    raise AssertionError("the upstream must not be reached")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # a malformed length, a malformed chunk (bare-LF line ends: the test after this one)
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
        (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        # a declared body over the limit is refused before it is read
        (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        # 5,000 header fields, a 64 KB header
        (
            b"GET /ping HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
            + b"\r\n",
            431,
        ),
        (b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n", 431),
    ],
    ids=["bad-length", "bad-chunk", "huge-length", "5000-headers", "64kb-header"],
)
def test_malformed_or_oversized_requests_get_a_4xx_without_reaching_the_server(
    request_bytes, status
):
    async def scenario():
        proxy = ReverseProxy(ProxyLimits(max_body_bytes=1024))
        upstream, address = await start_upstream(never_called)
        proxy.switch(address)
        async with running(proxy) as port:
            head, _body = await exchange(port, request_bytes)
            assert head.startswith(b"HTTP/1.1 %d" % status), head[:200]
        upstream.close()

    run(scenario())


BARE_LF_DEADLINE_S = 0.5


@pytest.mark.parametrize(
    ("request_bytes", "may_reach_server"),
    [
        # bare-LF line ends and a length the body never reaches: a 4xx, never a hang
        (b"POST /invocations HTTP/1.1\nHost: x\nContent-Length: 100\n\n{}", False),
        # a bare-LF ping: whatever the answer (a lenient parser would forward it), an answer
        (b"GET /ping HTTP/1.1\nHost: x\n\n", True),
    ],
    ids=["bare-lf-lying-length", "bare-lf-ping"],
)
def test_bare_lf_requests_are_answered_within_the_deadline(request_bytes, may_reach_server):
    reached = []

    async def respond(number, request):
        reached.append(request)
        return json_response({"status": "ok"})

    async def scenario():
        proxy = ReverseProxy(ProxyLimits(max_body_bytes=1024))
        upstream, address = await start_upstream(respond)
        proxy.switch(address)
        limits = ConnectionLimits(
            header_timeout_s=BARE_LF_DEADLINE_S, body_timeout_s=BARE_LF_DEADLINE_S
        )
        async with running(proxy, limits) as port:
            loop = asyncio.get_running_loop()
            started = loop.time()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes)
            # the connection must be answered and closed well before run()'s 20 s
            answer = await asyncio.wait_for(reader.read(), timeout=BARE_LF_DEADLINE_S + 5)
            elapsed = loop.time() - started
            writer.close()
        upstream.close()
        assert answer.startswith(b"HTTP/1.1 "), f"no status line: {answer[:200]!r}"
        status = int(answer[9:12])
        if may_reach_server:
            assert status < 500, answer[:300]
        else:
            assert 400 <= status < 500, answer[:300]
            assert reached == [], "a request with a lying length reached the server"
        assert elapsed < BARE_LF_DEADLINE_S + 2, f"answered after {elapsed:.2f} s"

    run(scenario())


def test_a_chunked_body_over_the_limit_is_a_413_as_soon_as_it_exceeds_it():
    async def scenario():
        proxy = ReverseProxy(ProxyLimits(max_body_bytes=1024))
        upstream, address = await start_upstream(never_called)
        proxy.switch(address)
        async with running(proxy) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"400\r\n"
                + b"a" * 1024
                + b"\r\n"
                + b"400\r\n"
                + b"a" * 1024
                + b"\r\n"
            )  # 2 KB sent, the terminating chunk never comes
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 413"), head
            assert "over 1024 bytes" in json.loads(body)["error"]["message"]
            writer.close()
        upstream.close()

    run(scenario())


def test_half_sent_requests_and_idle_connections_are_closed_by_deadlines():
    async def scenario():
        proxy = ReverseProxy()
        upstream, address = await start_upstream(never_called)
        proxy.switch(address)
        limits = ConnectionLimits(header_timeout_s=0.3, body_timeout_s=0.3)
        async with running(proxy, limits) as port:
            # headers that never end
            head, _ = await exchange(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
            assert head.startswith(b"HTTP/1.1 408"), head
            # a body shorter than its length
            head, _ = await exchange(
                port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}"
            )
            assert head.startswith(b"HTTP/1.1 408"), head
            # a connection that never sends anything is closed without an answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
            writer.close()
        upstream.close()

    run(scenario())
