"""``serve``: run the inference server the way SageMaker starts a container (``docker run IMAGE
serve``), or locally with ``python -m geo_busyness.serving --model-dir DIR --port P``."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

import uvicorn

from geo_busyness.resources.settings import (
    SERVING_MAX_BODY_ENV,
    SERVING_MAX_INSTANCES_ENV,
    SERVING_MODEL_DIR_ENV,
)
from geo_busyness.serving.app import (
    app_from_environment,
    configure_logging,
)
from geo_busyness.serving.protocol import (
    GuardedHttpToolsProtocol,
    add_connection_arguments,
    connection_limits,
)
from geo_busyness.serving.requests import RequestLimits

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
DEFAULT_PORT = 8080
# Longer than the 60 s idle timeout load balancers commonly use, so the server is never the
# side that closes a kept-alive connection the balancer is about to reuse.
DEFAULT_KEEP_ALIVE_S = 75


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = RequestLimits()
    parser = argparse.ArgumentParser(
        prog="serve", description="Serve busyness forecasts from a deployment bundle."
    )
    parser.add_argument(
        "--model-dir",
        default=os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR),
        help="bundle directory (default: $SM_MODEL_DIR or /opt/ml/model, where SageMaker "
        "extracts model.tar.gz)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT)),
        help="port (default: $SAGEMAKER_BIND_TO_PORT or 8080)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", 1)),
        help="server processes, each with its own copy of the bundle (default: "
        "$SAGEMAKER_MODEL_SERVER_WORKERS or 1); one per core scales throughput",
    )
    parser.add_argument(
        "--keep-alive",
        type=int,
        default=DEFAULT_KEEP_ALIVE_S,
        help=f"seconds an idle connection stays open (default {DEFAULT_KEEP_ALIVE_S})",
    )
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-instances", type=int, default=defaults.max_instances)
    add_connection_arguments(parser)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    try:
        RequestLimits(args.max_body_bytes, args.max_instances)
        args.connection_limits = connection_limits(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    """Load the bundle (failing fast with its error), then serve until SIGTERM/SIGINT."""
    args = parse_args(argv)
    os.environ[SERVING_MODEL_DIR_ENV] = os.path.abspath(args.model_dir)
    os.environ[SERVING_MAX_BODY_ENV] = str(args.max_body_bytes)
    os.environ[SERVING_MAX_INSTANCES_ENV] = str(args.max_instances)
    configure_logging(getattr(logging, args.log_level.upper()))
    options = {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        # httptools with deadlines and bounds; a partial pickles into --workers processes
        "http": functools.partial(GuardedHttpToolsProtocol, limits=args.connection_limits),
        "ws": "none",
        "access_log": False,  # the app logs one JSON line per invocation instead
        "log_level": args.log_level,
        "server_header": False,
        "timeout_keep_alive": args.keep_alive,
    }
    try:  # in this process first, so a bad bundle stops here instead of in every worker
        app = app_from_environment()
    except Exception as error:  # whatever is wrong with the bundle, say it and exit non-zero
        print(f"serve: cannot load the bundle in {args.model_dir}: {error}", file=sys.stderr)
        return 2
    if args.workers == 1:
        uvicorn.run(app, **options)
    else:
        del app
        uvicorn.run(
            "geo_busyness.serving.app:app_from_environment",
            factory=True,
            workers=args.workers,
            **options,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
