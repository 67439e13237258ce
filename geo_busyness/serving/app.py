"""The ASGI app: SageMaker's hosting contract (``GET /ping``, ``POST /invocations``) on Starlette.

Only HTTP lives here: reading a bounded body, choosing formats, turning ``RequestError`` into
a status with a JSON body, and one JSON log line per invocation. The CPU work runs on the event
loop itself: it is GIL-bound, a thread hop would only add latency, and more throughput comes
from more worker processes (``serve --workers``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from geo_busyness.resources.settings import (
    SERVING_MAX_BODY_ENV,
    SERVING_MAX_INSTANCES_ENV,
    SERVING_MODEL_DIR_ENV,
)
from geo_busyness.serving.bundle import LoadedBundle, load_bundle
from geo_busyness.serving.inference import forecast
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
# Read by ``app_from_environment`` in each worker process ``serve --workers N`` starts.


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
        if not declared.isdigit():
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


def create_app(bundle: LoadedBundle, limits: RequestLimits | None = None) -> Starlette:
    """The server for one loaded bundle; ``/ping`` answers 200 once this exists."""
    limits = limits or RequestLimits()
    manifest = bundle.manifest
    version_headers = {
        "X-Model-Name": manifest.model_name,
        "X-Model-Version": manifest.model_version,
    }
    ping_body = json.dumps(
        {
            "status": "ok",
            "model_name": manifest.model_name,
            "model_version": manifest.model_version,
        }
    ).encode()

    async def ping(request: Request) -> Response:
        return Response(ping_body, media_type=JSON_MEDIA_TYPE)

    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        inference_id = request.headers.get(INFERENCE_ID_HEADER) or str(uuid.uuid4())
        rows, problem = 0, None
        try:
            output_type = negotiate(request.headers.get("accept"))
            body = await _read_body(request, limits.max_body_bytes)
            instances = parse_request(
                body, request.headers.get("content-type"), manifest.h3_resolution, limits
            )
            rows = len(instances)
            result = forecast(bundle, instances)
            content = (
                csv_body(result)
                if output_type == CSV_MEDIA_TYPE
                else json_body(result, manifest, inference_id)
            )
            response = Response(
                content,
                media_type=output_type,
                headers={**version_headers, "X-Inference-Id": inference_id},
            )
        except RequestError as error:
            problem = error.message
            response = _error_response(error, inference_id)
        except Exception as error:  # a bug: answer in JSON, log the traceback
            LOGGER.exception("invocation %s failed", inference_id)
            problem = f"{type(error).__name__}: {error}"
            response = _error_response(
                RequestError(500, "internal error while forecasting; see the server log"),
                inference_id,
            )
        line = {
            "event": "invocation",
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
        return _error_response(
            RequestError(error.status_code, str(error.detail)),
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


def log_loaded(bundle: LoadedBundle, directory: str | os.PathLike[str]) -> None:
    manifest = bundle.manifest
    LOGGER.info(
        json.dumps(
            {
                "event": "bundle_loaded",
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
