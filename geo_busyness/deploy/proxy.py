"""The front proxy that holds the stable address while model servers come and go.

Why a proxy and not SO_REUSEPORT: with two servers on one SO_REUSEPORT port, connections still
queued on the old server's listener are reset when it closes, and its idle keep-alive
connections race with clients reusing them (measured: 11 failed requests in 70 switches of
uvicorn servers under a continuous client). The new server would also take live traffic
before it was checked. Behind this proxy a new server is checked on its own private port
first; ``switch`` then sends every *new* request to it, requests already running on the old
server finish (``drain``), and the proxy forgets its pooled connections to the old server, so
clients never see a server go away.

No HTTP is parsed here: the client side is uvicorn with the model server's own guarded
protocol (:mod:`geo_busyness.serving.protocol`: header and body deadlines, header size and
count limits, a connection cap), the upstream side is an ``httpx`` connection pool. This
module adds what a proxy needs on top: a body limit (413 before the body is read when
``Content-Length`` says so, else as soon as it is exceeded), a deadline for the upstream's
answer (504), one retry on a fresh connection when a pooled one fails before any answer (the
server closed it at the same moment; the body is buffered, and a prediction is a pure
function of it), and 502/503 answers that never name an internal port (the log does).

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
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from geo_busyness.serving.protocol import (
    ConnectionLimits,
    GuardedHttpToolsProtocol,
    add_connection_arguments,
    connection_limits,
)
from geo_busyness.serving.requests import RequestLimits

LOGGER = logging.getLogger("geo_busyness.proxy")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)
UNIX_SOCKET_PATH_MAX = 104  # sun_path: 108 bytes on Linux, 104 on macOS
# Longer than the 60 s idle timeout load balancers commonly use (as the model server's).
KEEP_ALIVE_S = 75


@dataclass(frozen=True)
class ProxyLimits:
    """What one request through the proxy may take, on top of the connection's limits."""

    max_body_bytes: int = RequestLimits().max_body_bytes
    response_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    upstream_idle_s: float = 2.0  # pooled upstream connections: well below the server's 75 s

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")


class _Refusal(Exception):
    """An answer the proxy gives itself: ``field`` names what was wrong with the request."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass
class Upstream:
    host: str
    port: int
    in_flight: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host, int(port)


def _pool(limits: ProxyLimits) -> httpx.AsyncClient:
    """One connection pool per upstream, so draining one closes exactly its connections."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.response_timeout_s, connect=limits.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=None,
            max_keepalive_connections=64,
            keepalive_expiry=limits.upstream_idle_s,
        ),
        trust_env=False,  # loopback upstreams never go through an HTTP(S)_PROXY
        follow_redirects=False,
    )


class ReverseProxy:
    """An ASGI app forwarding each request to the active upstream, with drain bookkeeping."""

    def __init__(self, limits: ProxyLimits | None = None) -> None:
        self.limits = limits or ProxyLimits()
        self.active: Upstream | None = None
        self.upstreams: dict[str, Upstream] = {}
        self.requests_served = 0
        self._pools: dict[str, httpx.AsyncClient] = {}
        self._changed = asyncio.Event()

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
        if upstream.in_flight == 0:
            self.upstreams.pop(address, None)
            pool = self._pools.pop(address, None)
            if pool is not None:
                await pool.aclose()
        return {"ok": True, "drained": upstream.in_flight == 0, "in_flight": upstream.in_flight}

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "upstream": self.active.address if self.active else None,
            "in_flight": {a: u.in_flight for a, u in self.upstreams.items()},
            "requests_served": self.requests_served,
        }

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()

    # ------------------------------------------------------------------ data path
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        upstream = self.active
        try:
            body = await self._read_body(scope, receive)
            if upstream is None:
                raise _Refusal(503, "no model server is deployed")
            upstream.in_flight += 1
            try:
                await self._forward(upstream, scope, body, send)
            finally:
                upstream.in_flight -= 1
                self.requests_served += 1
                self._changed.set()
        except _Refusal as refusal:
            await _reply(send, refusal.status, refusal.message, refusal.field)

    async def _read_body(self, scope, receive) -> bytes:
        limit = self.limits.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Refusal(413, f"request body over {limit} bytes", "body")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refusal(499, "client disconnected")
            body.extend(message.get("body", b""))
            if len(body) > limit:
                raise _Refusal(413, f"request body over {limit} bytes", "body")
            if not message.get("more_body", False):
                return bytes(body)

    def _pool_of(self, upstream: Upstream) -> httpx.AsyncClient:
        pool = self._pools.get(upstream.address)
        if pool is None:
            pool = self._pools[upstream.address] = _pool(self.limits)
        return pool

    async def _forward(self, upstream: Upstream, scope, body: bytes, send) -> None:
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name.decode().lower() not in HOP_BY_HOP
        ]
        client = scope.get("client")
        headers.append((b"x-forwarded-for", (client[0] if client else "unknown").encode()))
        url = httpx.URL(
            scheme="http",
            host=upstream.host,
            port=upstream.port,
            path=scope["path"],
            query=scope["query_string"],
        )
        pool = self._pool_of(upstream)
        request = pool.build_request(scope["method"], url, headers=headers, content=body)
        response = None
        for attempt in (1, 2):
            try:
                response = await pool.send(request, stream=True)
                break
            except httpx.TimeoutException:
                LOGGER.warning("upstream %s: no answer in time", upstream.address)
                raise _Refusal(
                    504,
                    f"the model server did not answer within {self.limits.response_timeout_s:g} s",
                ) from None
            except httpx.HTTPError as error:
                LOGGER.warning("upstream %s, attempt %d: %r", upstream.address, attempt, error)
                if isinstance(error, httpx.ConnectError) or attempt == 2:
                    raise _Refusal(
                        502, "the model server is not answering; retry shortly"
                    ) from None
        assert response is not None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name, value)
                        for name, value in response.headers.raw
                        if name.decode().lower() not in HOP_BY_HOP - {"content-length"}
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as error:
            # Half a response went out: raising makes uvicorn close the client connection,
            # the only way to tell the client.
            LOGGER.warning("upstream %s broke off its response: %r", upstream.address, error)
            raise ConnectionResetError(f"response from {upstream.address} broke off") from None
        finally:
            await response.aclose()


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


async def _reply(send, status: int, message: str, field: str | None) -> None:
    if status == 499:  # nobody to answer; not an error of ours
        return
    error: dict[str, Any] = {"status": status, "message": message}
    if field is not None:
        error["field"] = field
    body = json.dumps({"error": error}).encode()
    with contextlib.suppress(Exception):  # the client may already be gone
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


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


def http_server(
    proxy: ReverseProxy,
    connection: ConnectionLimits,
    grace_seconds: float,
    keep_alive_seconds: float = KEEP_ALIVE_S,
) -> uvicorn.Server:
    """uvicorn around ``proxy`` with the model server's guarded HTTP protocol."""
    config = uvicorn.Config(
        proxy,
        http=functools.partial(GuardedHttpToolsProtocol, limits=connection),
        ws="none",
        lifespan="off",
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=keep_alive_seconds,
        timeout_graceful_shutdown=grace_seconds,
        log_config=None,
    )
    return uvicorn.Server(config)


def listen(host: str, port: int) -> socket.socket:
    """The client-side listener. Made with ``IPPROTO_TCP`` so that the sockets it accepts are
    too, and asyncio sets ``TCP_NODELAY`` on them (it skips proto-0 sockets): without it a
    response head and body written apart meet the client's delayed ACK (measured through the
    proxy: 47 ms instead of 1 ms per request)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    return listener


async def serve(args: argparse.Namespace) -> int:
    proxy = ReverseProxy(args.limits)
    if args.upstream:
        proxy.switch(args.upstream)
    try:
        listener = listen(args.listen_host, args.listen_port)
    except OSError as error:
        print(f"cannot listen on {args.listen_host}:{args.listen_port}: {error}", file=sys.stderr)
        return 2
    control_path = Path(args.control_socket)
    control_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)  # the control socket is for this user only
    try:
        control = await asyncio.start_unix_server(
            lambda r, w: handle_control(proxy, r, w), path=str(control_path)
        )
    finally:
        os.umask(old_umask)
    server = http_server(proxy, args.connection_limits, args.grace_seconds, args.keep_alive)
    print(
        f"proxy pid {os.getpid()} on {args.listen_host}:{args.listen_port}, control {control_path}",
        flush=True,
    )
    try:
        await server.serve(sockets=[listener])  # returns after SIGTERM/SIGINT and the grace
    finally:
        control.close()
        await proxy.close()
        control_path.unlink(missing_ok=True)
    return 0


def _ignore_signal(_signum, _frame) -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down; with this handler
    in place that only returns, so ``serve`` can remove the control socket and exit 0."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    limits = ProxyLimits()
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--control-socket", required=True)
    parser.add_argument("--upstream", help="initial upstream host:port (default: none, 503)")
    parser.add_argument("--grace-seconds", type=float, default=30.0)
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=KEEP_ALIVE_S,
        help="seconds an idle client connection stays open",
    )
    parser.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes)
    parser.add_argument("--response-timeout", type=float, default=limits.response_timeout_s)
    parser.add_argument("--upstream-idle-seconds", type=float, default=limits.upstream_idle_s)
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    if len(str(args.control_socket)) >= UNIX_SOCKET_PATH_MAX:
        parser.error(f"--control-socket path longer than {UNIX_SOCKET_PATH_MAX - 1} characters")
    try:
        args.limits = ProxyLimits(
            max_body_bytes=args.max_body_bytes,
            response_timeout_s=args.response_timeout,
            upstream_idle_s=args.upstream_idle_seconds,
        )
        args.connection_limits = connection_limits(args)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _ignore_signal)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
