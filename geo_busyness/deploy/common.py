"""What every deployment target shares: the bundle manifest, the smoke test, the record, the error.

Pure Python (no Dagster, no AWS): the local and SageMaker targets and the Dagster resources
wrapping them all speak these types, so an asset can call ``target.deploy(...)`` on either.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

MANIFEST_FILE = "manifest.json"


class DeploymentFailed(RuntimeError):
    """A deployment did not go live; ``rolled_back`` says whether the previous model still serves.

    ``rolled_back`` is True also when nothing had to be undone (the new model never received
    traffic, or there was no previous model and the half-created endpoint was removed).
    """

    def __init__(self, reason: str, *, rolled_back: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rolled_back = rolled_back


@dataclass(frozen=True)
class BundleManifest:
    """The part of a bundle's ``manifest.json`` deployment needs."""

    model_name: str
    model_version: str
    bundle_dir: Path

    @classmethod
    def read(cls, bundle_dir: str | Path) -> BundleManifest:
        """Read and check a bundle before anything is started: a bad bundle must fail early."""
        bundle = Path(bundle_dir).expanduser().resolve()
        manifest_path = bundle / MANIFEST_FILE
        if not bundle.is_dir():
            raise DeploymentFailed(f"bundle directory {bundle} does not exist")
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise DeploymentFailed(f"bundle {bundle} has no {MANIFEST_FILE}") from None
        except (OSError, ValueError) as error:
            raise DeploymentFailed(f"cannot read {manifest_path}: {error}") from None
        if not isinstance(manifest, dict):
            raise DeploymentFailed(f"{manifest_path} is not a JSON object")
        missing = [
            key for key in ("model_name", "model_version") if manifest.get(key) in (None, "")
        ]
        if missing:
            raise DeploymentFailed(f"{manifest_path} lacks {', '.join(missing)}")
        return cls(
            model_name=str(manifest["model_name"]),
            model_version=str(manifest["model_version"]),
            bundle_dir=bundle,
        )


def _hour_key(value: Any) -> str:
    """Compare timestamps as instants: ``...Z`` and ``...+00:00`` are the same hour."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class SmokeTest:
    """One request sent to the new model before it takes traffic, and what its answer must be.

    ``expected_model_version`` None means "the bundle's version" (filled in by the target).
    ``expected_predictions`` (``h3_cell``, ``hour_start``, ``busyness``) are matched by cell and
    hour; busyness within ``tolerance``. Without them only the status, the shape and the model
    version are checked.
    """

    instances: Sequence[Mapping[str, Any]]
    expected_model_version: str | None = None
    expected_predictions: Sequence[Mapping[str, Any]] | None = None
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("a smoke test needs at least one instance to send")

    def for_version(self, model_version: str) -> SmokeTest:
        """This test expecting ``model_version`` unless a version was given explicitly."""
        if self.expected_model_version is not None:
            return self
        return SmokeTest(
            instances=self.instances,
            expected_model_version=model_version,
            expected_predictions=self.expected_predictions,
            tolerance=self.tolerance,
        )

    def request_body(self) -> bytes:
        return json.dumps({"instances": [dict(i) for i in self.instances]}).encode()

    def problems(self, body: bytes | str) -> list[str]:
        """Everything wrong with a response body (empty when it passes)."""
        try:
            answer = json.loads(body)
        except ValueError:
            return [f"response is not JSON: {_excerpt(body)}"]
        if not isinstance(answer, dict):
            return [f"response is not a JSON object: {_excerpt(body)}"]
        problems = []
        version = answer.get("model_version")
        if self.expected_model_version is not None and str(version) != self.expected_model_version:
            problems.append(
                f"model_version is {version!r}, expected {self.expected_model_version!r}"
            )
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or not predictions:
            problems.append(f"no predictions in the response: {_excerpt(body)}")
            return problems
        if self.expected_predictions is None:
            return problems
        received = {}
        for prediction in predictions:
            if isinstance(prediction, dict):
                key = (prediction.get("h3_cell"), _hour_key(prediction.get("hour_start")))
                received[key] = prediction.get("busyness")
        for expected in self.expected_predictions:
            key = (expected["h3_cell"], _hour_key(expected["hour_start"]))
            if key not in received:
                problems.append(f"no prediction for {key[0]} at {key[1]}")
                continue
            got, want = received[key], float(expected["busyness"])
            if not isinstance(got, int | float) or not math.isclose(
                got, want, rel_tol=0, abs_tol=self.tolerance
            ):
                problems.append(f"busyness for {key[0]} at {key[1]} is {got!r}, expected {want}")
        return problems


def _excerpt(body: bytes | str, limit: int = 300) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class DeploymentRecord:
    """What went live where; ``details`` holds target-specific facts (pid, endpoint config...)."""

    target: str
    address: str
    model_name: str
    model_version: str
    bundle_dir: str
    deployed_at: str
    previous_model_version: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for Dagster metadata."""
        return {**asdict(self), "details": dict(self.details)}


@runtime_checkable
class DeploymentTarget(Protocol):
    """Anything that can put a bundle behind a stable address."""

    def deploy(self, bundle_dir: str | Path, smoke: SmokeTest) -> DeploymentRecord: ...


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def compact_stamp() -> str:
    """UTC time for names that must sort and stay short: ``20250101T120000``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def slug(text: str, limit: int) -> str:
    """Letters, digits and single dashes only (valid in SageMaker names and file names)."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")
    return cleaned[:limit].strip("-") or "x"


class AwsClients:
    """boto3 clients created on first use (one per service, in ``region``, with per-service
    endpoint overrides for tests or VPC endpoints); clients passed in (stubs) are used as is."""

    def __init__(
        self,
        region: str | None,
        endpoints: Mapping[str, str | None],
        injected: Mapping[str, Any],
    ) -> None:
        self._region = region
        self._endpoints = dict(endpoints)
        self._clients = {
            service: client for service, client in injected.items() if client is not None
        }

    def __getitem__(self, service: str) -> Any:
        if service not in self._clients:
            import boto3

            session = boto3.session.Session(region_name=self._region)
            self._clients[service] = session.client(
                service, endpoint_url=self._endpoints.get(service)
            )
        return self._clients[service]
