"""The HTTP/1.1 connection: uvicorn's httptools protocol with the bounds it lacks.

uvicorn (0.54, httptools) arms one timer, between two requests of a kept-alive connection, and
limits nothing else: a connection that never sends a byte, a request whose headers never end,
a header of any size, any number of headers, a body that trickles in forever and any number of
open connections were all held for as long as the client liked (an idle connection stayed open
95 s, 3,000 half-sent requests held 3,018 descriptors, a 64 MB header was read whole).
``GuardedHttpToolsProtocol`` adds, per connection:

* a **header deadline**: a fresh connection must deliver its request line and headers within
  ``header_timeout_s``, a kept-alive one within that time of its next request's first byte;
  then 408 (or a silent close when nothing was sent at all);
* a **body deadline**: the body must be in ``body_timeout_s`` after the headers, else 408;
* **header bounds**: request line and headers at most ``max_header_bytes`` (414 / 431), at
  most ``max_headers`` fields (431), checked as bytes arrive, so an oversized header is never
  buffered;
* a **connection cap**: beyond ``max_connections`` the stalest connection that is between
  requests (idle, or still sending headers) is dropped for the new one; when every connection
  is busy with a request the new one gets 503.

Every connection that is not being answered therefore has a timer running, and the memory a
client can pin is a bounded header buffer and uvicorn's 64 KB body buffer per connection.
Refusals are JSON like the app's errors and are logged as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass, fields
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

LOGGER = logging.getLogger("geo_busyness.serving")
# Where a refusal sent by the connection is left for the app (``scope["state"]``), so the app's
# log line for a request cut short by a deadline says 408, not "disconnected".
REFUSAL_STATE_KEY = "geo_busyness_refusal"


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may take: time for headers and body, header size, connections."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 512

    def __post_init__(self) -> None:
        for item in fields(self):
            if not getattr(self, item.name) > 0:
                raise ValueError(f"{item.name} must be > 0, got {getattr(self, item.name)!r}")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`ConnectionLimits`, shared by the model server and the front proxy."""
    connection = ConnectionLimits()
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=connection.header_timeout_s,
        help="seconds a request's line and headers may take, from the connection's opening or "
        f"the request's first byte (default {connection.header_timeout_s:g}); then 408",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=connection.body_timeout_s,
        help="seconds the body may take after the headers (default "
        f"{connection.body_timeout_s:g}); then 408",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=connection.max_header_bytes,
        help=f"request line and headers, bytes (default {connection.max_header_bytes}); "
        "then 414 / 431",
    )
    parser.add_argument(
        "--max-headers",
        type=int,
        default=connection.max_headers,
        help=f"header fields per request (default {connection.max_headers}); then 431",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=connection.max_connections,
        help=f"open connections per process (default {connection.max_connections}); beyond, "
        "the stalest idle one is dropped, or the new one gets 503 when all are busy",
    )


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """:class:`ConnectionLimits` from the flags of :func:`add_connection_arguments`; raises
    ``ValueError`` naming a limit that is not positive."""
    return ConnectionLimits(
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        max_connections=args.max_connections,
    )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that was refused."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the deadlines and bounds of ``ConnectionLimits``.

    uvicorn builds one per connection; ``serve`` passes it as
    ``functools.partial(GuardedHttpToolsProtocol, limits=...)``, which pickles into the worker
    processes of ``--workers N``.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or ConnectionLimits()
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # between requests, or reading a request line and headers
        self._head_started = False  # bytes of the coming request have arrived
        self._head_bytes = 0  # bytes received while in the head (an upper bound)
        self._head_size = 0  # request line and header fields as parsed
        self._header_count = 0
        self._since = self.loop.time()  # when the current phase began: eviction order
        self._refused = False

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            LOGGER.warning(
                json.dumps({"event": "connection_refused", "connections": len(self.connections)})
            )
            self._refuse(503, "too many connections in progress; retry", None, log=False)
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
            self._head_started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if not self._refused:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, "invalid HTTP request", "request")
            return
        if self._refused or self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, self._headers_too_large(), "headers")
            return
        self._ensure_timer()

    def send_400_response(self, msg: str) -> None:  # uvicorn's own refusals, in our format
        self._refuse(400, msg, "request")

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = self._header_count = 0
        if self._deadline is None:  # a kept-alive connection: the clock starts now
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self.limits.max_header_bytes:
            self._refuse(414, f"request line over {self.limits.max_header_bytes} bytes", "url")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            message = f"more than {self.limits.max_headers} header fields"
            self._refuse(431, message, "headers")
            raise _Refused
        if self._head_size > self.limits.max_header_bytes:
            self._refuse(431, self._headers_too_large(), "headers")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = self._head_started = False
        self._since = self.loop.time()
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        self._since = self.loop.time()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._since = self.loop.time()
        super().on_response_complete()  # arms uvicorn's keep-alive timer

    # -- deadlines ----------------------------------------------------------------------------

    def _arm(self, seconds: float, handler) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _ensure_timer(self) -> None:
        """Whatever arrived, a connection that is not being answered keeps a timer running
        (uvicorn cancels its keep-alive timer on any data, e.g. the rest of a body sent after
        an early 413, or blank lines between requests, and would never re-arm it)."""
        if self._deadline is not None or self.timeout_keep_alive_task is not None:
            return
        if self._answering():
            return
        if self._head_started or self.cycle is None:
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
        else:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self._head_started:
            message = f"request headers not received within {self.limits.header_timeout_s:g} s"
            self._refuse(408, message, "headers")
        elif not self.transport.is_closing():  # it never asked anything: nothing to answer
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        message = f"request body not received within {self.limits.body_timeout_s:g} s"
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # answered already (say 413 before the body was in): stop reading what still comes
            self._refused = True
            self.transport.close()
            return
        if cycle is not None and not cycle.response_started:
            cycle.scope["state"][REFUSAL_STATE_KEY] = (408, message)
        self._refuse(408, message, "body")

    # -- refusing and evicting ----------------------------------------------------------------

    def _headers_too_large(self) -> str:
        return f"request headers over {self.limits.max_header_bytes} bytes"

    def _refuse(self, status: int, message: str, field: str | None, log: bool = True) -> None:
        """Answer ``status`` with a JSON error (unless a response is under way) and close."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app's response, if any, goes nowhere: its receive() sees a disconnect.
            writing = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            writing = False
        if not writing and not self.transport.is_closing():
            error: dict[str, Any] = {"status": status, "message": message}
            if field is not None:
                error["field"] = field
            body = json.dumps({"error": error}).encode()
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[status],
                        b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
        if not self.transport.is_closing():
            self.transport.close()
        if log:
            line = {"event": "refused", "status": status, "error": message}
            if self.client:
                line["client"] = f"{self.client[0]}:{self.client[1]}"
            LOGGER.info(json.dumps(line))

    def _evictable(self) -> bool:
        return not self._refused and self._in_head and not self._answering()

    def _evict_one(self) -> bool:
        """Drop the stalest connection that is idle or still sending headers, if there is one."""
        candidates = [
            connection
            for connection in self.connections
            if connection is not self
            and isinstance(connection, GuardedHttpToolsProtocol)
            and connection._evictable()
        ]
        if not candidates:
            return False
        victim = min(candidates, key=lambda connection: connection._since)
        victim._disarm()
        victim._unset_keepalive_if_required()
        if victim._head_started:
            victim._refuse(408, "connection dropped for a newer one: the server is full", None)
        else:
            victim._refused = True
            victim.transport.close()
        self.connections.discard(victim)
        return True
