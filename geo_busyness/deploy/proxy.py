"""A tiny HTTP/1.1 reverse proxy that holds the stable address while model servers come and go.

Why a proxy and not SO_REUSEPORT: with two servers on one SO_REUSEPORT port, connections still
queued on the old server's listener are reset when it closes, and its idle keep-alive
connections race with clients reusing them (measured: 11 failed requests in 70 switches of
uvicorn servers under a continuous client). The new server would also take live traffic
before it was checked. Behind this proxy a new server is checked on its own private port
first; ``switch`` then sends every *new* request to it, requests already running on the old
server finish (``drain``), and the proxy itself closes its pooled connections to the old
server, so clients never see a server go away.

Requests are parsed (HTTP/1.1, ``Content-Length`` or chunked bodies) so the upstream is
chosen per request, not per client connection. Upstream connections idle for longer than
``--upstream-idle-seconds`` (below uvicorn's 5 s keep-alive) are not reused, and a request
that fails on a reused connection before any response byte arrives is retried once on a
fresh one (the server closed it at the same moment).

Control: newline-delimited JSON on a Unix socket (``--control-socket``, only this user can
reach it): ``{"op": "status"}``, ``{"op": "switch", "upstream": "127.0.0.1:PORT"}``,
``{"op": "drain", "upstream": ..., "timeout": SECONDS}``. SIGTERM stops accepting, lets
running requests finish (``--grace-seconds``) and exits.

Run as ``python -m geo_busyness.deploy.proxy --listen-host H --listen-port P --control-socket S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_HEAD_BYTES = 64 * 1024
COPY_CHUNK = 64 * 1024
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"})
UNIX_SOCKET_PATH_MAX = 104  # sun_path: 108 bytes on Linux, 104 on macOS


class BadRequest(Exception):
    """The client sent something this proxy will not forward."""


class UpstreamUnavailable(Exception):
    """The model server could not be reached or broke off before answering."""


@dataclass
class Upstream:
    host: str
    port: int
    in_flight: int = 0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(
        default_factory=list
    )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close_idle(self) -> None:
        for _reader, writer, _since in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Message:
    """A request or response head, its headers in order, and how its body is delimited."""

    start_line: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def connection_tokens(self) -> set[str]:
        value = ",".join(v for k, v in self.headers if k.lower() == "connection")
        return {token.strip().lower() for token in value.split(",") if token.strip()}

    def encode(self, extra: list[tuple[str, str]] | None = None) -> bytes:
        """Head without hop-by-hop headers (each side manages its own connection)."""
        kept = [(k, v) for k, v in self.headers if k.lower() not in HOP_BY_HOP]
        lines = [self.start_line, *(f"{k}: {v}" for k, v in [*kept, *(extra or [])])]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """No Nagle: a response head and body written apart would otherwise meet the client's
    delayed ACK (measured: 47 ms instead of 3 ms per request). asyncio sets it only on
    sockets whose proto is IPPROTO_TCP, which accepted sockets of a proto-0 listener are not."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port)


async def read_head(reader: asyncio.StreamReader) -> Message | None:
    """The next message head, or None when the peer closed cleanly between messages."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial.strip():
            return None
        raise BadRequest("connection closed in the middle of a message head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest(f"message head larger than {MAX_HEAD_BYTES} bytes") from None
    lines = raw.decode("latin-1").split("\r\n")
    while lines and not lines[0]:  # tolerate stray CRLF between keep-alive messages
        lines.pop(0)
    if not lines:
        return None
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line!r}")
        headers.append((name, value.strip()))
    return Message(lines[0], headers)


def _parse_length(text: str | bytes, base: int) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise BadRequest(f"invalid body length {text!r}") from None
    if value < 0:
        raise BadRequest(f"invalid body length {text!r}")
    return value


async def copy_body(
    message: Message, reader: asyncio.StreamReader, write: Callable[[bytes], Awaitable[None]]
) -> bool:
    """Relay a body delimited by chunked encoding or Content-Length; False if read-until-close."""
    if (message.header("transfer-encoding") or "").lower().endswith("chunked"):
        while True:
            size_line = await reader.readuntil(b"\r\n")
            await write(size_line)
            size = _parse_length(size_line.split(b";")[0].strip() or b"0", base=16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readuntil(b"\r\n")
                    await write(line)
                    if line == b"\r\n":
                        return True
            await write(await reader.readexactly(size + 2))
    length = message.header("content-length")
    if length is None:
        return False
    remaining = _parse_length(length, base=10)
    while remaining:
        chunk = await reader.readexactly(min(remaining, COPY_CHUNK))
        remaining -= len(chunk)
        await write(chunk)
    return True


class ReverseProxy:
    """Per-request forwarding to the active upstream, with drain bookkeeping."""

    def __init__(self, upstream_idle_seconds: float = 2.0, connect_timeout: float = 5.0) -> None:
        self.active: Upstream | None = None
        self.upstreams: dict[str, Upstream] = {}
        self.upstream_idle_seconds = upstream_idle_seconds
        self.connect_timeout = connect_timeout
        self.requests_served = 0
        self._changed = asyncio.Event()
        self._clients: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------------ control
    def switch(self, address: str) -> str | None:
        host, port = parse_address(address)
        previous = self.active.address if self.active else None
        self.active = self.upstreams.setdefault(address, Upstream(host, port))
        return previous

    async def drain(self, address: str, timeout: float) -> dict[str, Any]:
        """Wait until no request runs on ``address``, then forget it (it must not be active)."""
        upstream = self.upstreams.get(address)
        if upstream is None:
            return {"ok": True, "drained": True, "in_flight": 0}
        if upstream is self.active:
            return {"ok": False, "error": f"{address} is the active upstream; switch first"}
        deadline = time.monotonic() + timeout
        while upstream.in_flight and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
        upstream.close_idle()
        if upstream.in_flight == 0:
            self.upstreams.pop(address, None)
        return {"ok": True, "drained": upstream.in_flight == 0, "in_flight": upstream.in_flight}

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "upstream": self.active.address if self.active else None,
            "in_flight": {a: u.in_flight for a, u in self.upstreams.items()},
            "requests_served": self.requests_served,
        }

    # ------------------------------------------------------------------ data path
    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        _no_delay(writer)
        self._clients.add(writer)
        try:
            while True:
                try:
                    request = await read_head(reader)
                except BadRequest as error:
                    await self._reply(writer, 400, str(error), close=True)
                    return
                if request is None:
                    return
                keep_alive = self._client_keeps_alive(request)
                upstream = self.active
                if upstream is None:
                    await self._discard_body(request, reader)
                    await self._reply(writer, 503, "no model server deployed", close=not keep_alive)
                    if not keep_alive:
                        return
                    continue
                upstream.in_flight += 1
                try:
                    keep_alive = await self._forward(upstream, request, reader, writer, keep_alive)
                finally:
                    upstream.in_flight -= 1
                    self.requests_served += 1
                    self._changed.set()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except BadRequest as error:  # a malformed body length: the stream cannot be resynced
            with contextlib.suppress(ConnectionError):
                await self._reply(writer, 400, str(error), close=True)
        finally:
            self._clients.discard(writer)
            writer.close()

    @staticmethod
    def _client_keeps_alive(request: Message) -> bool:
        tokens = request.connection_tokens()
        if request.start_line.endswith("HTTP/1.0"):
            return "keep-alive" in tokens
        return "close" not in tokens

    async def _discard_body(self, request: Message, reader: asyncio.StreamReader) -> None:
        async def drop(_data: bytes) -> None:
            return None

        await copy_body(request, reader, drop)

    async def _reply(self, writer: asyncio.StreamWriter, status: int, text: str, close: bool):
        reason = {400: "Bad Request", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
        body = json.dumps({"error": text}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        writer.write(Message(f"HTTP/1.1 {status} {reason}", headers).encode() + body)
        await writer.drain()

    async def _connection(self, upstream: Upstream):
        """A pooled connection still well inside the server's keep-alive, or a new one."""
        now = time.monotonic()
        while upstream.idle:
            reader, writer, since = upstream.idle.pop()
            if now - since < self.upstream_idle_seconds and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(upstream.host, upstream.port, limit=MAX_HEAD_BYTES),
            self.connect_timeout,
        )
        _no_delay(writer)
        return reader, writer, False

    async def _send_request(self, upstream: Upstream, head: bytes, body: bytes):
        """Send and read the response head; one retry when a reused connection was closed."""
        for _attempt in range(2):
            try:
                reader, writer, reused = await self._connection(upstream)
            except (OSError, TimeoutError) as error:
                raise UpstreamUnavailable(
                    f"cannot connect to {upstream.address}: {error}"
                ) from None
            try:
                writer.write(head + body)
                await writer.drain()
                response = await read_head(reader)
                if response is None:
                    raise ConnectionResetError("closed before responding")
                return reader, writer, response
            except (ConnectionError, asyncio.IncompleteReadError, BadRequest) as error:
                writer.close()
                if not reused:
                    raise UpstreamUnavailable(f"{upstream.address} failed: {error!r}") from None
        raise UpstreamUnavailable(f"{upstream.address} closed two connections without answering")

    async def _forward(
        self,
        upstream: Upstream,
        request: Message,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        keep_alive: bool,
    ) -> bool:
        body = bytearray()

        async def collect(data: bytes) -> None:
            body.extend(data)

        if (request.header("expect") or "").lower() == "100-continue":
            # The whole body is read before forwarding, so answer the client's wait here.
            request.headers = [(k, v) for k, v in request.headers if k.lower() != "expect"]
            client_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await client_writer.drain()
        if not await copy_body(request, client_reader, collect):
            body.clear()  # a request without length has no body
        head = request.encode([("X-Forwarded-For", self._peer(client_writer))])
        try:
            reader, writer, response = await self._send_request(upstream, head, bytes(body))
            while response.start_line.split(" ")[1:2] == ["100"]:  # interim answers
                following = await read_head(reader)
                if following is None:
                    raise UpstreamUnavailable(f"{upstream.address} closed after 100 Continue")
                response = following
        except UpstreamUnavailable as error:
            await self._reply(client_writer, 502, str(error), close=not keep_alive)
            return keep_alive
        status = response.start_line.split(" ")[1] if " " in response.start_line else ""
        bodyless = request.start_line.startswith("HEAD ") or status in {"204", "304"}
        delimited = bodyless or response.header("content-length") is not None
        delimited = delimited or (response.header("transfer-encoding") or "").lower().endswith(
            "chunked"
        )
        keep_alive = keep_alive and delimited
        upstream_reusable = delimited and "close" not in response.connection_tokens()
        client_writer.write(response.encode([] if keep_alive else [("Connection", "close")]))

        async def relay(data: bytes) -> None:
            client_writer.write(data)
            await client_writer.drain()

        try:
            if not bodyless and not await copy_body(response, reader, relay):
                while data := await reader.read(COPY_CHUNK):  # body runs until the server closes
                    await relay(data)
            await client_writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, BadRequest) as error:
            writer.close()  # half a response went out: only closing tells the client
            raise ConnectionResetError(f"response from {upstream.address} broke off") from error
        if upstream_reusable and upstream.address in self.upstreams:
            upstream.idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return keep_alive

    @staticmethod
    def _peer(writer: asyncio.StreamWriter) -> str:
        peer = writer.get_extra_info("peername")
        return str(peer[0]) if peer else "unknown"

    def close_connections(self) -> None:
        for writer in list(self._clients):
            writer.close()
        for upstream in self.upstreams.values():
            upstream.close_idle()


async def handle_control(
    proxy: ReverseProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while line := await reader.readline():
            try:
                command = json.loads(line)
                op = command.get("op")
                if op == "status":
                    answer = proxy.status()
                elif op == "switch":
                    answer = {"ok": True, "previous": proxy.switch(str(command["upstream"]))}
                elif op == "drain":
                    answer = await proxy.drain(
                        str(command["upstream"]), float(command.get("timeout", 30))
                    )
                else:
                    answer = {"ok": False, "error": f"unknown op {op!r}"}
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                answer = {"ok": False, "error": f"bad command: {error}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def control_request(socket_path: str | Path, command: dict[str, Any], timeout: float) -> dict:
    """Send one control command to a running proxy and return its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(json.dumps(command).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("proxy closed the control connection without answering")
            answer += chunk
    return json.loads(answer)


async def serve(args: argparse.Namespace) -> int:
    proxy = ReverseProxy(upstream_idle_seconds=args.upstream_idle_seconds)
    if args.upstream:
        proxy.switch(args.upstream)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.listen_host, args.listen_port))
    except OSError as error:
        print(f"cannot listen on {args.listen_host}:{args.listen_port}: {error}", file=sys.stderr)
        return 2
    listener.listen(1024)
    server = await asyncio.start_server(proxy.handle_client, sock=listener, limit=MAX_HEAD_BYTES)
    control_path = Path(args.control_socket)
    control_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)  # the control socket is for this user only
    try:
        control = await asyncio.start_unix_server(
            lambda r, w: handle_control(proxy, r, w), path=str(control_path)
        )
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(
        f"proxy pid {os.getpid()} on {args.listen_host}:{args.listen_port}, control {control_path}",
        flush=True,
    )
    await stop.wait()
    server.close()
    control.close()
    deadline = time.monotonic() + args.grace_seconds
    while any(u.in_flight for u in proxy.upstreams.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    proxy.close_connections()
    control_path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--control-socket", required=True)
    parser.add_argument("--upstream", help="initial upstream host:port (default: none, 503)")
    parser.add_argument("--upstream-idle-seconds", type=float, default=2.0)
    parser.add_argument("--grace-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if len(str(args.control_socket)) >= UNIX_SOCKET_PATH_MAX:
        parser.error(f"--control-socket path longer than {UNIX_SOCKET_PATH_MAX - 1} characters")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
