"""The front proxy's HTTP handling and switch/drain, in-process on loopback sockets (port 0).

Each test runs the proxy and fake upstream servers on one asyncio loop; clients speak raw
HTTP/1.1 so framing (chunked, close-delimited, keep-alive) is checked byte for byte.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from geo_busyness.deploy.proxy import ReverseProxy, handle_control

pytestmark = pytest.mark.unit

POST = (
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


async def start_proxy(proxy: ReverseProxy) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(proxy.handle_client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


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
        server, port = await start_proxy(ReverseProxy())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(POST)
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 503"), head
            assert json.loads(body) == {"error": "no model server deployed"}
        writer.close()
        server.close()

    run(scenario())


def test_an_unreachable_upstream_is_a_502_naming_it():
    async def scenario():
        proxy = ReverseProxy(connect_timeout=2)
        upstream, address = await start_upstream(None)
        upstream.close()
        await upstream.wait_closed()
        proxy.switch(address)
        server, port = await start_proxy(proxy)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(POST)
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 502"), head
        assert address in json.loads(body)["error"]
        writer.close()
        server.close()

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
        server, port = await start_proxy(proxy)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):  # keep-alive: both on one client connection
            writer.write(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = await read_response(reader)
            assert body == b"hello world", (head, body)
        writer.write(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_response(reader)
        assert body == b"until close"
        assert b"connection: close" in head.lower()
        assert await reader.read() == b"", "the client connection must close after such a body"
        writer.close()
        server.close()
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
        proxy = ReverseProxy(upstream_idle_seconds=60)
        upstream, address = await start_upstream(respond)
        proxy.switch(address)
        server, port = await start_proxy(proxy)
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
        server.close()
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
        server, port = await start_proxy(proxy)

        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(POST)
        await until(lambda: proxy.upstreams[old_address].in_flight == 1, "the slow request runs")

        assert proxy.switch(new_address) == old_address
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(POST)
        _head, body = await read_response(reader)
        assert json.loads(body) == {"version": "new"}

        drain = asyncio.create_task(proxy.drain(old_address, timeout=10))
        released_when_drained = []
        drain.add_done_callback(lambda _: released_when_drained.append(release_old.is_set()))
        await asyncio.sleep(0)  # one loop step: the drain runs up to its first wait
        assert not drain.done(), "drain returned while a request still ran on the old upstream"
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
        for item in (server, old_server, new_server):
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
        server, port = await start_proxy(proxy)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\n\r\n"
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"ok": True}
        writer.close()
        server.close()
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


def test_a_malformed_body_length_is_a_400_and_the_connection_closes():
    async def scenario():
        proxy = ReverseProxy()
        proxy.switch("127.0.0.1:9")  # never reached
        server, port = await start_proxy(proxy)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 400"), head
        assert "invalid body length" in json.loads(body)["error"]
        assert await reader.read() == b""
        writer.close()
        server.close()

    run(scenario())
