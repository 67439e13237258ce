"""What every deployment target shares: the bundle manifest, the smoke test, the record, the error.

Pure Python (no Dagster, no AWS): the local and SageMaker targets and the Dagster resources
wrapping them all speak these types, so an asset can call ``target.deploy(...)`` on either.

A multi-city bundle (``cities.json`` listing members under ``cities/<city>/``, see
``geo_busyness.serving.bundle``) deploys like a single one: its ``model_name`` and
``model_version`` are the combined labels the server reports (``regina=3,saskatoon=12``) and
``members`` holds each city's model name and version, for records and status. The layout's
names are repeated here rather than imported, so deploying never imports the serving stack.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from geo_busyness.core.city import CITY_ID

MANIFEST_FILE = "manifest.json"
CITIES_FILE = "cities.json"  # a multi-city bundle's member list (serving.bundle.CITIES_FILE)


def city_label(values: Mapping[str, str]) -> str:
    """``regina=3,saskatoon=12``: the combined label of a multi-city bundle, as the server's."""
    return ",".join(f"{city}={values[city]}" for city in sorted(values))


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
    """The part of a bundle's ``manifest.json`` deployment needs.

    ``members`` is ``{city: {"model_name": ..., "model_version": ...}}`` for a multi-city
    bundle (whose name and version are then the combined labels), empty for a single one.
    """

    model_name: str
    model_version: str
    bundle_dir: Path
    members: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def read(cls, bundle_dir: str | Path) -> BundleManifest:
        """Read and check a bundle before anything is started: a bad bundle must fail early."""
        bundle = Path(bundle_dir).expanduser().resolve()
        if not bundle.is_dir():
            raise DeploymentFailed(f"bundle directory {bundle} does not exist")
        if (bundle / CITIES_FILE).is_file():
            return cls._read_cities(bundle)
        single = cls._read_manifest(bundle / MANIFEST_FILE, bundle)
        return cls(model_name=single[0], model_version=single[1], bundle_dir=bundle)

    @classmethod
    def _read_cities(cls, bundle: Path) -> BundleManifest:
        path = bundle / CITIES_FILE
        try:
            entries = json.loads(path.read_text()).get("members")
        except (OSError, ValueError, AttributeError) as error:
            raise DeploymentFailed(f"cannot read {path}: {error}") from None
        if not isinstance(entries, list) or not entries:
            raise DeploymentFailed(f"{path} lists no members")
        members = {}
        for entry in entries:
            city = entry.get("city") if isinstance(entry, dict) else None
            if not isinstance(city, str) or not CITY_ID.match(city):
                raise DeploymentFailed(f"{path} has a member without a valid city id: {entry!r}")
            name, version = cls._read_manifest(
                bundle / "cities" / city / MANIFEST_FILE, bundle, city
            )
            members[city] = {"model_name": name, "model_version": version}
        return cls(
            model_name=city_label({c: m["model_name"] for c, m in members.items()}),
            model_version=city_label({c: m["model_version"] for c, m in members.items()}),
            bundle_dir=bundle,
            members=members,
        )

    @staticmethod
    def _read_manifest(
        manifest_path: Path, bundle: Path, city: str | None = None
    ) -> tuple[str, str]:
        """``(model_name, model_version)`` of one manifest, else DeploymentFailed."""
        where = f"bundle {bundle}" + (f" (city {city})" if city else "")
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise DeploymentFailed(f"{where} has no {MANIFEST_FILE}") from None
        except (OSError, ValueError) as error:
            raise DeploymentFailed(f"cannot read {manifest_path}: {error}") from None
        if not isinstance(manifest, dict):
            raise DeploymentFailed(f"{manifest_path} is not a JSON object")
        missing = [
            key for key in ("model_name", "model_version") if manifest.get(key) in (None, "")
        ]
        if missing:
            raise DeploymentFailed(f"{manifest_path} lacks {', '.join(missing)}")
        return str(manifest["model_name"]), str(manifest["model_version"])


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
    hour; busyness within ``tolerance``. A row that also names ``city`` or ``model_version``
    must be answered by that city and version: the prediction's own ``model_version`` (a
    multi-city answer) or else the response's. Without rows only the status, the shape and
    the model version are checked. ``expected_city_versions`` (``{city: version}``, filled in
    for a multi-city bundle) is checked against every prediction that names its city.
    """

    instances: Sequence[Mapping[str, Any]]
    expected_model_version: str | None = None
    expected_predictions: Sequence[Mapping[str, Any]] | None = None
    tolerance: float = 1e-4
    expected_city_versions: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.instances:
            raise ValueError("a smoke test needs at least one instance to send")

    def for_version(self, model_version: str) -> SmokeTest:
        """This test expecting ``model_version`` unless a version was given explicitly."""
        if self.expected_model_version is not None:
            return self
        return replace(self, expected_model_version=model_version)

    def for_bundle(self, manifest: BundleManifest) -> SmokeTest:
        """``for_version`` of the bundle, expecting each member's version from its city."""
        smoke = self.for_version(manifest.model_version)
        if manifest.members and smoke.expected_city_versions is None:
            versions = {city: m["model_version"] for city, m in manifest.members.items()}
            smoke = replace(smoke, expected_city_versions=versions)
        return smoke

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
        received = {}
        for prediction in predictions:
            if isinstance(prediction, dict):
                key = (prediction.get("h3_cell"), _hour_key(prediction.get("hour_start")))
                received[key] = prediction
                problems += self._city_version_problems(prediction, key)
        if self.expected_predictions is None:
            return problems
        for expected in self.expected_predictions:
            key = (expected["h3_cell"], _hour_key(expected["hour_start"]))
            if key not in received:
                problems.append(f"no prediction for {key[0]} at {key[1]}")
                continue
            got, want = received[key].get("busyness"), float(expected["busyness"])
            if not isinstance(got, int | float) or not math.isclose(
                got, want, rel_tol=0, abs_tol=self.tolerance
            ):
                problems.append(f"busyness for {key[0]} at {key[1]} is {got!r}, expected {want}")
            if "city" in expected and received[key].get("city") != expected["city"]:
                problems.append(
                    f"{key[0]} at {key[1]} was answered by city "
                    f"{received[key].get('city')!r}, expected {expected['city']!r}"
                )
            if "model_version" in expected:
                got_version = received[key].get("model_version", version)
                if str(got_version) != str(expected["model_version"]):
                    problems.append(
                        f"{key[0]} at {key[1]} was answered by model_version {got_version!r}, "
                        f"expected {str(expected['model_version'])!r}"
                    )
        return problems

    def _city_version_problems(self, prediction: Mapping[str, Any], key: tuple) -> list[str]:
        """A multi-city prediction must come from its city's version in the bundle."""
        if not self.expected_city_versions:
            return []
        city = prediction.get("city")
        if city not in self.expected_city_versions:
            return [f"{key[0]} at {key[1]} names city {city!r}, not one of the bundle's"]
        want = self.expected_city_versions[city]
        if str(prediction.get("model_version")) != want:
            return [
                f"{key[0]} at {key[1]} ({city}) has model_version "
                f"{prediction.get('model_version')!r}, expected {want!r}"
            ]
        return []


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
    # {city: {"model_name", "model_version"}} of a multi-city bundle; empty for a single one
    members: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, e.g. for Dagster metadata."""
        return {
            **asdict(self),
            "details": dict(self.details),
            "members": {city: dict(model) for city, model in self.members.items()},
        }


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
