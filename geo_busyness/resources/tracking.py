"""MLflow tracking and model registry as a Dagster ``ConfigurableResource``.

Why a thin wrapper rather than dagster-mlflow's ``mlflow_tracking`` resource as it is: that
resource is a legacy ``@resource`` (no typed config in the Launchpad), opens an MLflow run when
the resource is initialized, so every step that only reads the registry would open one too,
and leaves the run RUNNING unless a job hook ends it, which ad-hoc materializations from the
UI do not have. It also creates experiments with MLflow's default artifact root, a
directory relative to the working directory. This resource keeps dagster-mlflow's run
handling (its ``MlFlow`` class: one MLflow run per Dagster run, found again through the
``dagster_run_id`` tag, so the steps of one run share it) and adds what is missing:
an experiment whose artifacts live next to the SQLite store, a run that ends with the step
(FINISHED or FAILED), and the registry operations for the ``champion`` alias.

Credentials in the tracking URI (``http://user:password@host``, a database password) are used,
never shown: the URI and the run links in metadata are redacted (``geo_busyness.core.redact``),
so are the messages of the errors this resource (and its client) raises, and MLflow's own
"View run at <tracking URI>" line on stdout, which Dagster would keep in the compute logs, is
replaced by a redacted line in the run's log.

``mlflow`` is imported inside the methods: importing it takes ~4 s, and every Dagster step
process loads this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
from pydantic import Field

from geo_busyness.core.redact import redact_url, redacted_errors
from geo_busyness.resources.settings import default_data_dir

CHAMPION_ALIAS = "champion"
PREVIOUS_CHAMPION_TAG = "previous_champion"
# Where `scripts/dev mlflow-ui` serves a local store.
LOCAL_UI_URL = "http://127.0.0.1:5000"
# MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends (credentials and all).
SUPPRESS_URL_PRINTING_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def _redacting(method: Callable) -> Callable:
    """``method`` with the secrets masked in the message of whatever it raises."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        with redacted_errors():
            return method(*args, **kwargs)

    return call


class _RedactingClient:
    """An ``MlflowClient`` whose errors carry no credentials (MLflow's REST errors quote the
    request URL, tracking URI included)."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        return _redacting(value) if callable(value) else value


@contextlib.contextmanager
def _no_url_printing() -> Iterator[None]:
    previous = os.environ.get(SUPPRESS_URL_PRINTING_ENV)
    os.environ[SUPPRESS_URL_PRINTING_ENV] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SUPPRESS_URL_PRINTING_ENV, None)
        else:
            os.environ[SUPPRESS_URL_PRINTING_ENV] = previous


def _load_xgboost(model_uri: str):
    """``mlflow.xgboost.load_model`` into a temp dir removed afterwards: by default MLflow
    downloads each load into a new directory of the system temp dir and leaves it there (a
    long-running daemon loads the champion for every forecast, deployment and drift report)."""
    import mlflow.xgboost

    with tempfile.TemporaryDirectory(prefix="geo-busyness-model-") as download:
        return mlflow.xgboost.load_model(model_uri, dst_path=download)


def default_tracking_uri() -> str:
    """A SQLite store in the project's data directory (created on first use)."""
    store = default_data_dir() / "mlflow" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store}"


@dataclass(frozen=True)
class Champion:
    """A registered model version that holds (or held) the champion alias."""

    version: str
    run_id: str
    model_uri: str
    previous_version: str | None


class MlflowTracking(dg.ConfigurableResource):
    """Where experiments, runs, logged models and the model registry live.

    The default is a SQLite store with artifacts next to it under the data directory;
    ``MLFLOW_TRACKING_URI`` (e.g. ``http://127.0.0.1:5000`` for an ``mlflow server``) moves
    both tracking and registry elsewhere. Set ``ui_url`` to link runs from Dagster metadata.
    """

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking and registry URI; default: a SQLite store in the data directory.",
    )
    artifact_location: str | None = Field(
        default=None,
        description="Artifact root of a new experiment; default: 'artifacts' next to a SQLite "
        "store, the server's own root for an MLflow server.",
    )
    experiment_name: str = "geo_busyness"
    registered_model_name: str = "geo_busyness_hex_busyness"
    ui_url: str | None = Field(
        default=None,
        description="MLflow UI base URL for links from Dagster metadata; default: the tracking "
        "server, or http://127.0.0.1:5000 (scripts/dev mlflow-ui) for a local store.",
    )

    def for_city(self, city_id: str) -> MlflowTracking:
        """The same store with the experiment and registered model of one city (``<name>-<city
        id>``): each city has its own versions and champion alias, and the cities trained in one
        Dagster run (a weekly retrain) get one MLflow run each."""
        return MlflowTracking(
            tracking_uri=self.tracking_uri,
            artifact_location=self.artifact_location,
            experiment_name=f"{self.experiment_name}-{city_id}",
            registered_model_name=f"{self.registered_model_name}-{city_id}",
            ui_url=self.ui_url,
        )

    # -- tracking ---------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The tracking URI as MLflow needs it: credentials included. Never show it; show
        :attr:`display_uri`."""
        return self.tracking_uri or default_tracking_uri()

    @property
    def display_uri(self) -> str:
        """The tracking URI without its password or secret query parameters."""
        return redact_url(self.uri)

    def client(self):
        """An ``MlflowClient`` of this store; the messages of its errors are redacted."""
        from mlflow import MlflowClient

        return _RedactingClient(MlflowClient(tracking_uri=self.uri, registry_uri=self.uri))

    def _activate(self) -> None:
        """Point MLflow's fluent API (log_model, register_model, load_model) at this store."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)

    def _artifact_root(self) -> str | None:
        if self.artifact_location:
            return self.artifact_location
        if self.uri.startswith("sqlite:///"):
            store = Path(self.uri.removeprefix("sqlite:///"))
            return (store.parent / "artifacts").as_uri()
        return None

    @_redacting
    def experiment_id(self) -> str:
        """The experiment's id, creating it (with its artifact root) if it does not exist."""
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(
            self.experiment_name, artifact_location=self._artifact_root()
        )

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext, run_name: str) -> Iterator[Any]:
        """The MLflow run of this Dagster run, active for the block and ended with it.

        Yields dagster-mlflow's ``MlFlow`` object (every ``mlflow`` function, plus
        ``mlflow_run_id``); the run is FAILED if the block raises. Whatever the block raises
        leaves it redacted: its messages may quote the tracking URI.
        """
        import mlflow

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)  # dagster-mlflow marks itself beta
            from dagster_mlflow.resources import MlFlow

        with redacted_errors():
            self.experiment_id()
            self._activate()
            legacy_context = SimpleNamespace(
                log=context.log,
                dagster_run=context.run,
                run_id=context.run.run_id,
                resource_config={
                    "experiment_name": self.experiment_name,
                    "mlflow_tracking_uri": self.uri,
                    "extra_tags": {"dagster_asset": context.asset_key.to_user_string()},
                },
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                tracking = MlFlow(legacy_context)
            # MlFlow only records the id of a run it found again, not of one it started.
            run_id = mlflow.active_run().info.run_id
            tracking.mlflow_run_id = run_id
            mlflow.set_tag("mlflow.runName", run_name)
        with redacted_errors():
            try:
                yield tracking
            except BaseException:
                self._end_run(context, run_id, "FAILED")
                raise
            self._end_run(context, run_id, "FINISHED")

    def _end_run(self, context: dg.AssetExecutionContext, run_id: str, status: str) -> None:
        """End the active run; its link goes to the run's log, redacted, not to stdout."""
        import mlflow

        with _no_url_printing():
            mlflow.end_run(status=status)
        try:
            url = self.run_url(run_id)
        except Exception:  # a link is not worth the step (or the error it is failing with)
            url = None
        if url:
            context.log.info(f"MLflow run {run_id} ended {status}: {url}")

    def _ui_base(self) -> str | None:
        """The MLflow UI: ``ui_url``, else the tracking server itself, else (a local store)
        where ``scripts/dev ui`` serves it."""
        base = self.ui_url
        if not base and self.uri.startswith(("http://", "https://")):
            base = self.uri
        if not base and self.uri.startswith("sqlite:"):
            base = LOCAL_UI_URL
        return base.rstrip("/") if base else None

    def run_url(self, run_id: str) -> str | None:
        """Link to the run in the MLflow UI; redacted."""
        base = self._ui_base()
        if not base:
            return None
        return redact_url(f"{base}/#/experiments/{self.experiment_id()}/runs/{run_id}")

    def model_version_url(self, version: str) -> str | None:
        """Link to a version of the registered model in the MLflow UI; redacted."""
        base = self._ui_base()
        if not base:
            return None
        name = urllib.parse.quote(self.registered_model_name)
        return redact_url(f"{base}/#/models/{name}/versions/{version}")

    def run_metadata(self, run_id: str) -> dict[str, dg.MetadataValue]:
        """Metadata that leads from a Dagster materialization to its MLflow run."""
        metadata = {
            "mlflow_run_id": dg.MetadataValue.text(run_id),
            "mlflow_tracking_uri": dg.MetadataValue.text(self.display_uri),
        }
        url = self.run_url(run_id)
        if url:
            metadata["mlflow_run"] = dg.MetadataValue.url(url)
        return metadata

    # -- registry ---------------------------------------------------------------------------

    @_redacting
    def champion(self) -> Champion | None:
        """The version the ``champion`` alias points at, or None before the first promotion."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            version = client.get_model_version_by_alias(self.registered_model_name, CHAMPION_ALIAS)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return Champion(
            version=str(version.version),
            run_id=version.run_id,
            model_uri=f"models:/{self.registered_model_name}@{CHAMPION_ALIAS}",
            previous_version=(version.tags or {}).get(PREVIOUS_CHAMPION_TAG) or None,
        )

    @_redacting
    def load_champion(self):
        """The champion as an ``xgboost.XGBRegressor`` and its :class:`Champion`, or (None, None)."""
        champion = self.champion()
        if champion is None:
            return None, None
        self._activate()
        return _load_xgboost(champion.model_uri), champion

    @_redacting
    def load_version(self, version: str):
        """One registered version as an ``xgboost.XGBRegressor`` (pinned, unlike the alias)."""
        self._activate()
        return _load_xgboost(f"models:/{self.registered_model_name}/{version}")

    @_redacting
    def promote(self, model_uri: str, run_id: str) -> tuple[Champion, bool]:
        """Register ``model_uri`` and point the champion alias at it; returns the champion and
        whether it changed. Promoting the model that is already champion changes nothing, so
        re-materializing ``champion_model`` is idempotent."""
        import mlflow

        current = self.champion()
        if current is not None and current.run_id == run_id:
            return current, False
        self._activate()
        version = mlflow.register_model(model_uri, self.registered_model_name)
        client = self.client()
        previous = current.version if current else ""
        client.set_model_version_tag(
            self.registered_model_name, version.version, PREVIOUS_CHAMPION_TAG, previous
        )
        client.set_registered_model_alias(
            self.registered_model_name, CHAMPION_ALIAS, version.version
        )
        return Champion(
            version=str(version.version),
            run_id=run_id,
            model_uri=f"models:/{self.registered_model_name}@{CHAMPION_ALIAS}",
            previous_version=previous or None,
        ), True

    @_redacting
    def rollback(self) -> Champion | None:
        """Point the champion alias back at the version it replaced."""
        current = self.champion()
        if current is None:
            raise ValueError(f"{self.registered_model_name} has no champion to roll back")
        if not current.previous_version:
            raise ValueError(
                f"champion version {current.version} of {self.registered_model_name} replaced "
                "no earlier version; there is nothing to roll back to"
            )
        client = self.client()
        client.set_registered_model_alias(
            self.registered_model_name, CHAMPION_ALIAS, current.previous_version
        )
        return self.champion()
