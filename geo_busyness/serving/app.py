"""The ASGI app: SageMaker's hosting contract (``GET /ping``, ``POST /invocations``) on Starlette.

Only HTTP lives here: reading a bounded body, choosing formats, turning ``RequestError`` into
a status with a JSON body, and one JSON log line per invocation (a client that goes away is
logged as ``client_disconnected``, 499, not as an error).

Parsing and forecasting a body over ``Capacity.inline_bytes`` runs in a thread, so ``/ping``
and small requests are answered while a large one is parsed (a body of 12,000 instances with
one distinct unknown key each used to block ``/ping`` for 8.4 s). A small body is answered on
the event loop, where a thread hop would only add latency. At most ``Capacity.max_active``
invocations hold a body at once and at most ``Capacity.threads`` parse at once (more
throughput comes from more worker processes, ``serve --workers``); a request that cannot get
a turn within ``Capacity.queue_timeout_s`` is answered 503 with ``Retry-After``, so every
answer comes within a fixed budget: the connection's header and body deadlines
(``protocol.ConnectionLimits``), twice the queue timeout and the parse of a body within the
bounds of ``RequestLimits`` (well under a second for the largest accepted).

A multi-city bundle is served the same way: ``/ping``, the ``X-Model-*`` headers and the log
lines carry its combined ``model_name``/``model_version`` labels (``regina=3,saskatoon=12``),
``/ping`` adds the ``model_versions``/``model_names`` maps by city.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
import uuid
import weakref
from dataclasses import dataclass, fields

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from geo_busyness.resources.settings import (
    SERVING_MAX_BODY_ENV,
    SERVING_MAX_INSTANCES_ENV,
    SERVING_MODEL_DIR_ENV,
)
from geo_busyness.serving.bundle import LoadedBundle, MultiCityBundle, load_bundle
from geo_busyness.serving.inference import forecast
from geo_busyness.serving.protocol import REFUSAL_STATE_KEY
from geo_busyness.serving.requests import (
    CSV_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    RequestError,
    RequestLimits,
    parse_request,
)
from geo_busyness.serving.responses import csv_body, error_body, json_body, negotiate

LOGGER = logging.getLogger("geo_busyness.serving")
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"
CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that went away before the answer
# Read by ``app_from_environment`` in each worker process ``serve --workers N`` starts.


@dataclass(frozen=True)
class Capacity:
    """How much work one server process takes on at once, and how long a request may queue."""

    max_active: int = 32  # invocations holding a body in memory at once
    threads: int = 2  # invocations parsing and forecasting at once, off the event loop
    queue_timeout_s: float = 10.0  # the longest a request waits for each turn before a 503
    inline_bytes: int = 16 * 1024  # a body up to this size is answered on the event loop

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value < 0 or (value == 0 and item.name != "inline_bytes"):
                raise ValueError(f"{item.name} must be > 0, got {value!r}")


class _Busy(Exception):
    """No turn within the queue timeout."""


class _Gates:
    """The two semaphores of ``Capacity``, one pair per event loop (tests run several)."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self) -> tuple[asyncio.Semaphore, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.get(loop)
        if pair is None:
            pair = (
                asyncio.Semaphore(self.capacity.max_active),
                asyncio.Semaphore(self.capacity.threads),
            )
            self._by_loop[loop] = pair
        return pair


async def _acquire(gate: asyncio.Semaphore, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await gate.acquire()
    except TimeoutError:
        raise _Busy from None


def configure_logging(level: int = logging.INFO) -> None:
    """Request lines go to stdout as bare JSON (what CloudWatch collects from a container)."""
    if any(getattr(h, "_geo_busyness_serving", False) for h in LOGGER.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._geo_busyness_serving = True  # type: ignore[attr-defined]
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def _error_response(error: RequestError, inference_id: str) -> Response:
    return Response(
        error_body(error, inference_id),
        status_code=error.status,
        media_type=JSON_MEDIA_TYPE,
        headers={"X-Inference-Id": inference_id},
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise RequestError(400, f"invalid Content-Length {declared!r}", field="Content-Length")
        if int(declared) > limit:
            raise RequestError(
                413, f"body of {int(declared)} bytes; at most {limit} are accepted", field="body"
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over {limit} bytes; not accepted", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(
    bundle: LoadedBundle | MultiCityBundle,
    body: bytes,
    content_type: str | None,
    limits: RequestLimits,
    output_type: str,
    inference_id: str,
) -> tuple[int, bytes | RequestError]:
    """Body → ``(rows, response body)``, or ``(rows, error)`` for keys the snapshot lacks."""
    if isinstance(bundle, MultiCityBundle):
        resolution, identity = bundle.resolutions, bundle
    else:
        resolution, identity = bundle.manifest.h3_resolution, bundle.manifest
    instances = parse_request(body, content_type, resolution, limits)
    try:
        result = forecast(bundle, instances)
    except RequestError as error:
        return len(instances), error
    if output_type == CSV_MEDIA_TYPE:
        if instances.explain:
            raise RequestError(
                406, 'contributions ("explain": true) come in JSON responses only', field="Accept"
            )
        return len(instances), csv_body(result)
    return len(instances), json_body(result, identity, inference_id)


def create_app(
    bundle: LoadedBundle | MultiCityBundle,
    limits: RequestLimits | None = None,
    capacity: Capacity | None = None,
) -> Starlette:
    """The server for one loaded bundle; ``/ping`` answers 200 once this exists."""
    limits = limits or RequestLimits()
    capacity = capacity or Capacity()
    gates = _Gates(capacity)
    manifest = bundle if isinstance(bundle, MultiCityBundle) else bundle.manifest
    version_headers = {
        "X-Model-Name": manifest.model_name,
        "X-Model-Version": manifest.model_version,
    }
    ping_fields = {
        "status": "ok",
        "model_name": manifest.model_name,
        "model_version": manifest.model_version,
    }
    if isinstance(bundle, MultiCityBundle):
        ping_fields |= {"model_versions": bundle.model_versions, "model_names": bundle.model_names}
    ping_body = json.dumps(ping_fields).encode()

    async def ping(request: Request) -> Response:
        return Response(ping_body, media_type=JSON_MEDIA_TYPE)

    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        inference_id = request.headers.get(INFERENCE_ID_HEADER) or str(uuid.uuid4())
        rows, problem, event = 0, None, "invocation"
        active, threads = gates.get()
        try:
            output_type = negotiate(request.headers.get("accept"))
            await _acquire(active, capacity.queue_timeout_s)
            try:
                body = await _read_body(request, limits.max_body_bytes)
                work = (bundle, body, request.headers.get("content-type"), limits)
                if len(body) <= capacity.inline_bytes:
                    rows, content = _answer(*work, output_type, inference_id)
                else:
                    await _acquire(threads, capacity.queue_timeout_s)
                    try:
                        rows, content = await run_in_threadpool(
                            _answer, *work, output_type, inference_id
                        )
                    finally:
                        threads.release()
            finally:
                active.release()
            if isinstance(content, RequestError):
                raise content
            response = Response(
                content,
                media_type=output_type,
                headers={**version_headers, "X-Inference-Id": inference_id},
            )
        except RequestError as error:
            problem = error.message
            response = _error_response(error, inference_id)
        except _Busy:
            problem = f"no turn within {capacity.queue_timeout_s:g} s"
            response = _error_response(
                RequestError(503, f"the server is busy: {problem}; retry"), inference_id
            )
            response.headers["Retry-After"] = "1"
        except ClientDisconnect:
            refusal = request.scope.get("state", {}).get(REFUSAL_STATE_KEY)
            if refusal is not None:  # the connection answered for us (a deadline)
                status, problem = refusal
            else:
                event, status = "client_disconnected", CLIENT_CLOSED_REQUEST
                problem = "the client disconnected before sending the whole body"
            response = Response(status_code=status)  # goes nowhere: the client is gone
        except Exception as error:  # a bug: answer in JSON, log the traceback
            LOGGER.exception("invocation %s failed", inference_id)
            problem = f"{type(error).__name__}: {error}"
            response = _error_response(
                RequestError(500, "internal error while forecasting; see the server log"),
                inference_id,
            )
        line = {
            "event": event,
            "inference_id": inference_id,
            "status": response.status_code,
            "rows": rows,
            "latency_ms": round((time.perf_counter() - started) * 1e3, 3),
            "model_version": manifest.model_version,
        }
        if problem is not None:
            line["error"] = problem
        LOGGER.info(json.dumps(line))
        return response

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        field = {404: "path", 405: "method"}.get(error.status_code)
        return _error_response(
            RequestError(error.status_code, str(error.detail), field=field),
            request.headers.get(INFERENCE_ID_HEADER) or str(uuid.uuid4()),
        )

    async def server_error(request: Request, error: Exception) -> Response:
        return _error_response(RequestError(500, "internal server error"), str(uuid.uuid4()))

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.bundle = bundle
    app.state.limits = limits
    app.state.capacity = capacity
    return app


def limits_from_environment() -> RequestLimits:
    defaults = RequestLimits()
    return RequestLimits(
        max_body_bytes=int(os.environ.get(SERVING_MAX_BODY_ENV, defaults.max_body_bytes)),
        max_instances=int(os.environ.get(SERVING_MAX_INSTANCES_ENV, defaults.max_instances)),
    )


def app_from_environment() -> Starlette:
    """Factory for uvicorn worker processes: the bundle directory and limits come from env.

    Ends with ``gc.freeze()``: the ~150k objects of the imports and the bundle never become
    garbage, yet every full collection would rescan them, a 70-110 ms pause every few thousand
    requests that showed up as the open-loop p99 of the benchmark.
    """
    configure_logging()
    directory = os.environ[SERVING_MODEL_DIR_ENV]
    bundle = load_bundle(directory)
    log_loaded(bundle, directory)
    app = create_app(bundle, limits_from_environment())
    gc.collect()
    gc.freeze()
    return app


def log_loaded(bundle: LoadedBundle | MultiCityBundle, directory: str | os.PathLike[str]) -> None:
    """One ``bundle_loaded`` line, or one per city of a multi-city bundle (with its ``city``)."""
    if isinstance(bundle, MultiCityBundle):
        for city, member in bundle.members.items():
            _log_member(member, directory, {"city": city})
        return
    _log_member(bundle, directory, {})


def _log_member(bundle: LoadedBundle, directory: str | os.PathLike[str], extra: dict) -> None:
    manifest = bundle.manifest
    LOGGER.info(
        json.dumps(
            {
                "event": "bundle_loaded",
                **extra,
                "model_dir": str(directory),
                "model_name": manifest.model_name,
                "model_version": manifest.model_version,
                "rows": len(bundle.index),
                "hexagons": len(bundle.index.cells),
                "horizon_start": manifest.horizon_start,
                "horizon_end": manifest.horizon_end,
                "pid": os.getpid(),
            }
        )
    )
