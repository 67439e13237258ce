"""The deployment bundle: one directory with everything the inference server needs.

``model.ubj`` (the XGBoost booster, which carries its feature names), ``features.parquet``
(the feature snapshot: one row per active hexagon and UTC hour of the forecast horizon) and
``manifest.json`` (what model, which inputs, which horizon). SageMaker ships it as a
``model.tar.gz`` of the directory's files and extracts that into ``/opt/ml/model``.

The server forecasts from the snapshot, so a request only names a cell (or a coordinate) and
an hour: the features are computed by the batch pipeline exactly as for training.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tarfile
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import h3ronpy
import numpy as np
import pandas as pd
import pyarrow as pa

from geo_busyness.core.features import HOUR_NS
from geo_busyness.core.geo import strings_to_cells
from geo_busyness.serving.snapshot import SnapshotIndex

# XGBoost loads only where a bundle is read: the Dagster run processes import this module to
# write bundles, and most of them never deploy.
if TYPE_CHECKING:
    import xgboost as xgb

MODEL_FILE = "model.ubj"
FEATURES_FILE = "features.parquet"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MANIFEST_FILE, MODEL_FILE, FEATURES_FILE)
KEY_COLUMNS = ("h3_cell", "hour_start")


def _utc_iso(value: str | dt.datetime | pd.Timestamp, name: str) -> str:
    """ISO-8601 in UTC (``+00:00``); a time without a zone is refused, not guessed."""
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} is not a timestamp: {value!r}") from error
    if stamp is pd.NaT:
        raise ValueError(f"{name} is not a timestamp: {value!r}")
    if stamp.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (UTC), got {value!r}")
    return stamp.tz_convert("UTC").isoformat()


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds. Times are normalized to ISO-8601 UTC strings; the horizon is
    half-open, ``[horizon_start, horizon_end)``, and both ends lie on the hour."""

    model_name: str
    model_version: str
    mlflow_run_id: str | None
    feature_names: list[str]
    h3_resolution: int
    horizon_start: str
    horizon_end: str
    created_at: str = field(default_factory=_now_iso)

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name must be a non-empty string, got {self.model_name!r}")
        if isinstance(self.model_version, int) and not isinstance(self.model_version, bool):
            object.__setattr__(self, "model_version", str(self.model_version))
        if not isinstance(self.model_version, str) or not self.model_version:
            raise ValueError(
                f"model_version must be a non-empty string, got {self.model_version!r}"
            )
        if self.mlflow_run_id is not None and not isinstance(self.mlflow_run_id, str):
            raise ValueError(f"mlflow_run_id must be a string or None, got {self.mlflow_run_id!r}")
        names = list(self.feature_names)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError("feature_names must be a non-empty list of column names")
        if len(set(names)) != len(names):
            raise ValueError(f"feature_names has duplicates: {names}")
        object.__setattr__(self, "feature_names", names)
        resolution = self.h3_resolution
        if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
            raise ValueError(f"h3_resolution must be an integer, got {resolution!r}")
        if not 0 <= resolution <= 15:
            raise ValueError(f"h3_resolution must be 0..15, got {resolution}")
        object.__setattr__(self, "h3_resolution", int(resolution))
        for name in ("horizon_start", "horizon_end", "created_at"):
            object.__setattr__(self, name, _utc_iso(getattr(self, name), name))
        start, end = self.horizon
        if start.value % HOUR_NS or end.value % HOUR_NS:
            raise ValueError(f"the horizon must start and end on the hour, got [{start}, {end})")
        if end <= start:
            raise ValueError(f"horizon_end {end} must be after horizon_start {start}")

    @property
    def horizon(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """``(horizon_start, horizon_end)`` as UTC timestamps."""
        return pd.Timestamp(self.horizon_start), pd.Timestamp(self.horizon_end)

    @property
    def horizon_hours(self) -> int:
        start, end = self.horizon
        return int((end.value - start.value) // HOUR_NS)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("manifest.json must hold a JSON object")
        expected = {f.name for f in fields(cls)}
        missing = sorted(expected - data.keys() - {"created_at"})
        if missing:
            raise ValueError(f"manifest.json lacks {missing}")
        return cls(**{key: value for key, value in data.items() if key in expected})


@dataclass(frozen=True, eq=False)
class LoadedBundle:
    """A bundle ready to serve: the booster, its manifest and the indexed feature snapshot.

    ``iteration_range`` reproduces ``XGBRegressor.predict``: an early-stopped model predicts
    with its best iteration, while a bare ``Booster`` would use every tree it holds.
    """

    booster: xgb.Booster
    manifest: Manifest
    index: SnapshotIndex
    iteration_range: tuple[int, int]

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """Predicted busyness (float32) for snapshot rows, in one call for the whole batch."""
        matrix = self.index.features[rows]
        if len(matrix) == 0:
            return np.zeros(0, dtype="float32")
        return np.asarray(
            self.booster.inplace_predict(
                matrix, iteration_range=self.iteration_range, missing=np.nan
            ),
            dtype="float32",
        ).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Validation shared by writing and loading


def _booster_feature_names(booster: xgb.Booster, manifest: Manifest) -> None:
    """The model must have been fitted on exactly the manifest's columns, in that order."""
    if booster.feature_names is None:
        raise ValueError(
            "the model carries no feature names: fit it on a DataFrame whose columns are the "
            "manifest's feature_names, so their order can be checked"
        )
    if list(booster.feature_names) != manifest.feature_names:
        raise ValueError(
            "the model's feature names differ from manifest.feature_names: "
            f"model {list(booster.feature_names)}, manifest {manifest.feature_names}"
        )


def _snapshot_arrays(
    features: pd.DataFrame, manifest: Manifest
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cells uint64, hour_ns int64, float32 matrix)`` of a valid snapshot, else ValueError."""
    missing = [c for c in (*KEY_COLUMNS, *manifest.feature_names) if c not in features.columns]
    if missing:
        raise ValueError(f"the feature snapshot lacks columns {missing}")
    if features.empty:
        raise ValueError("the feature snapshot has no rows: nothing to serve")
    if features["h3_cell"].isna().any():
        raise ValueError("the feature snapshot has rows without h3_cell")
    try:
        cells = strings_to_cells(features["h3_cell"].to_numpy(dtype=object))
    except ValueError as error:
        raise ValueError(f"the feature snapshot's h3_cell column: {error}") from error
    resolutions = np.asarray(pa.array(h3ronpy.cells_resolution(pa.array(cells))), dtype="int64")
    wrong = resolutions != manifest.h3_resolution
    if wrong.any():
        raise ValueError(
            f"{int(wrong.sum())} snapshot cells are not at the manifest's resolution "
            f"{manifest.h3_resolution}, e.g. {features['h3_cell'].to_numpy()[wrong][:3].tolist()} "
            f"at {sorted(set(resolutions[wrong].tolist()))}"
        )

    hours = features["hour_start"]
    if not isinstance(hours.dtype, pd.DatetimeTZDtype):
        raise ValueError(
            f"hour_start must be a timezone-aware (UTC) datetime column, got {hours.dtype}"
        )
    if hours.isna().any():
        raise ValueError("the feature snapshot has rows without hour_start")
    hour_ns = hours.dt.tz_convert("UTC").dt.as_unit("ns").astype("int64").to_numpy()
    if (hour_ns % HOUR_NS).any():
        raise ValueError("hour_start values must lie on the hour")
    start, end = manifest.horizon
    outside = (hour_ns < start.value) | (hour_ns >= end.value)
    if outside.any():
        first = pd.Timestamp(hour_ns[outside][0], tz="UTC")
        raise ValueError(
            f"{int(outside.sum())} snapshot rows lie outside the horizon "
            f"[{manifest.horizon_start}, {manifest.horizon_end}), e.g. {first.isoformat()}"
        )
    keys = pd.DataFrame({"cell": cells, "hour": hour_ns})
    duplicated = keys.duplicated(keep=False).to_numpy()
    if duplicated.any():
        example = features.loc[duplicated, list(KEY_COLUMNS)].iloc[0]
        raise ValueError(
            f"the feature snapshot has {int(duplicated.sum())} rows with duplicate "
            f"(h3_cell, hour_start) keys, e.g. ({example['h3_cell']}, {example['hour_start']})"
        )
    try:
        matrix = features[manifest.feature_names].to_numpy(dtype="float32", na_value=np.nan)
    except (TypeError, ValueError) as error:
        raise ValueError(f"feature columns must be numeric: {error}") from error
    return cells, hour_ns, matrix


def _index(features: pd.DataFrame, manifest: Manifest) -> SnapshotIndex:
    cells, hour_ns, matrix = _snapshot_arrays(features, manifest)
    return SnapshotIndex.build(
        cells, hour_ns, matrix, manifest.horizon[0].value, manifest.horizon_hours
    )


# ---------------------------------------------------------------------------------------------
# Writing, packing, loading


def write_bundle(
    directory: Path, model: xgb.XGBRegressor, features: pd.DataFrame, manifest: Manifest
) -> Path:
    """Write the bundle to ``directory`` atomically and return it.

    Everything is validated and written into a temporary directory next to ``directory`` and
    then renamed into place, so a reader never sees half a bundle. An existing bundle at
    ``directory`` is replaced; any other non-empty directory there is refused.
    """
    directory = Path(directory)
    booster = model.get_booster()
    _booster_feature_names(booster, manifest)
    _snapshot_arrays(features, manifest)  # validates; the server checks it again on load
    snapshot = features[[*KEY_COLUMNS, *manifest.feature_names]].copy()
    snapshot["h3_cell"] = snapshot["h3_cell"].astype("string")
    snapshot["hour_start"] = snapshot["hour_start"].dt.tz_convert("UTC")
    snapshot = snapshot.sort_values(list(KEY_COLUMNS), ignore_index=True)

    if directory.exists() and (
        not directory.is_dir()
        or (any(directory.iterdir()) and not (directory / MANIFEST_FILE).is_file())
    ):
        raise FileExistsError(f"{directory} exists and is not a bundle; not replacing it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        booster.save_model(staging / MODEL_FILE)
        snapshot.to_parquet(staging / FEATURES_FILE, index=False)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        if directory.exists():
            retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
            directory.rename(retired)
            staging.rename(directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive members without the builder's user names, readable by any container user."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def tar_bundle(directory: Path, archive: Path) -> Path:
    """Pack the bundle's files at the root of a gzipped tar (SageMaker's ``model.tar.gz``)."""
    directory, archive = Path(directory), Path(archive)
    missing = [name for name in BUNDLE_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a bundle: it lacks {missing}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    staging = archive.parent / f".{archive.name}.tmp-{uuid.uuid4().hex}"
    try:
        with tarfile.open(staging, "w:gz") as tar:
            for name in BUNDLE_FILES:
                tar.add(directory / name, arcname=name, filter=_owned_by_root)
        os.replace(staging, archive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
    return archive


def load_bundle(directory: Path, prediction_threads: int = 1) -> LoadedBundle:
    """Read and check a bundle, and index its snapshot for batch lookups.

    ``prediction_threads`` is XGBoost's ``nthread``: one per server process by default, since
    OpenMP's start-up cost dwarfs a small batch (a one-row prediction took ~30x longer with two
    threads on the 2-core benchmark machine); scale with server workers instead.
    """
    directory = Path(directory)
    missing = [name for name in BUNDLE_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a bundle: it lacks {missing}")
    manifest = Manifest.from_json((directory / MANIFEST_FILE).read_text())
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(directory / MODEL_FILE))
    booster.set_param({"nthread": prediction_threads})
    _booster_feature_names(booster, manifest)
    features = pd.read_parquet(directory / FEATURES_FILE)
    best = booster.attr("best_iteration")
    iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
    return LoadedBundle(
        booster=booster,
        manifest=manifest,
        index=_index(features, manifest),
        iteration_range=iteration_range,
    )
