"""The deployment bundle: one directory with everything the inference server needs.

``model.ubj`` (the XGBoost booster, which carries its feature names), ``features.parquet``
(the feature snapshot: one row per active hexagon and UTC hour of the forecast horizon) and
``manifest.json`` (what model, which inputs, which horizon). SageMaker ships it as a
``model.tar.gz`` of the directory's files and extracts that into ``/opt/ml/model``.

The server forecasts from the snapshot, so a request only names a cell (or a coordinate) and
an hour: the features are computed by the batch pipeline exactly as for training.

A multi-city bundle (``write_city_bundle``) is one directory too, so SageMaker and the local
server take it as they take a single one: ``cities.json`` at the top lists the members in
routing order, and each member is an ordinary bundle under ``cities/<city_id>/`` with its own
model, resolution, horizon and snapshot. ``load_bundle`` reads either layout; a multi-city
bundle loads as a ``MultiCityBundle``. Its ``model_name`` and ``model_version`` are combined
labels, ``<city>=<value>`` joined by ``,`` in city-id order (``regina=3,saskatoon=12``): the
same label for every request, so pings, headers, logs and deployment records say which models
serve, while each prediction names its own ``city`` and ``model_version``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import h3ronpy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geo_busyness.core.city import CITY_ID
from geo_busyness.core.features import HOUR_NS
from geo_busyness.core.geo import cells_to_strings, strings_to_cells
from geo_busyness.core.model import margin_offset, offset_feature
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
CITIES_FILE = "cities.json"  # present only in a multi-city bundle
CITIES_DIR = "cities"
CITY_BUNDLE_FORMAT = 1


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
                matrix,
                iteration_range=self.iteration_range,
                missing=np.nan,
                base_margin=self._margin(matrix),
            ),
            dtype="float32",
        ).reshape(-1)

    @functools.cached_property
    def _offset_column(self) -> int | None:
        """The snapshot column the model's Poisson offset comes from (None: no offset)."""
        feature = offset_feature(self.booster)
        return None if feature is None else self.manifest.feature_names.index(feature)

    def _margin(self, matrix: np.ndarray) -> np.ndarray | None:
        """The model's Poisson offset for these rows (None for a model without one)."""
        column = self._offset_column
        return None if column is None else margin_offset(matrix[:, column])

    def contributions_json(self, rows: np.ndarray) -> pa.StringArray:
        """Per snapshot row, ``{"<feature>": contribution, ..., "bias": b}``: XGBoost's SHAP
        values (``pred_contribs``) in the model's margin, the log of the expected orders, so
        they sum to ``log(busyness)``; the bias holds the model's offset. Built column by
        column (no loop over rows)."""
        import xgboost as xgb

        names = [*self.manifest.feature_names, "bias"]
        features = self.index.features[rows]
        matrix = xgb.DMatrix(
            features, feature_names=self.manifest.feature_names, base_margin=self._margin(features)
        )
        values = self.booster.predict(
            matrix, pred_contribs=True, iteration_range=self.iteration_range
        ).reshape(len(rows), len(names))
        pieces: list = []
        for position, name in enumerate(names):
            pieces.append(("{" if position == 0 else ",") + json.dumps(name) + ":")
            pieces.append(pa.array(values[:, position], pa.float32()).cast(pa.string()))
        return pc.binary_join_element_wise(*pieces, "}", "")


def city_label(values: Mapping[str, str]) -> str:
    """``{"saskatoon": "12", "regina": "3"}`` → ``"regina=3,saskatoon=12"`` (city-id order)."""
    return ",".join(f"{city}={values[city]}" for city in sorted(values))


@dataclass(frozen=True, eq=False)
class MultiCityBundle:
    """Loaded members of a multi-city bundle, in routing order, keyed by city id.

    ``model_name`` / ``model_version`` are the combined labels of the module docstring, so
    code that logs or compares one bundle's version works unchanged for several models.
    """

    members: Mapping[str, LoadedBundle]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a multi-city bundle needs at least one city")
        _check_disjoint(
            {
                city: (member.manifest.h3_resolution, member.index.cells)
                for city, member in self.members.items()
            }
        )

    @property
    def cities(self) -> tuple[str, ...]:
        return tuple(self.members)

    @property
    def model_names(self) -> dict[str, str]:
        return {city: m.manifest.model_name for city, m in self.members.items()}

    @property
    def model_versions(self) -> dict[str, str]:
        return {city: m.manifest.model_version for city, m in self.members.items()}

    @property
    def model_name(self) -> str:
        return city_label(self.model_names)

    @property
    def model_version(self) -> str:
        return city_label(self.model_versions)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The distinct H3 resolutions of the members, ascending."""
        return tuple(sorted({m.manifest.h3_resolution for m in self.members.values()}))


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
    booster, snapshot, _cells = _prepared(model, features, manifest)
    return _replace_atomically(
        Path(directory), lambda staging: _save(staging, booster, snapshot, manifest)
    )


class CityMember(NamedTuple):
    """One city of a multi-city bundle: its champion model, feature snapshot and manifest."""

    model: xgb.XGBRegressor
    features: pd.DataFrame
    manifest: Manifest


def write_city_bundle(
    directory: Path,
    members: Mapping[str, CityMember | tuple[xgb.XGBRegressor, pd.DataFrame, Manifest]],
) -> Path:
    """Write a multi-city bundle atomically (as ``write_bundle`` does) and return it.

    ``members`` maps city ids to ``(model, snapshot, manifest)``; each is validated as a single
    bundle is and written under ``cities/<city_id>/``. Their order is the routing order (a
    coordinate that lands in active hexagons of two cities at different resolutions goes to
    the first). Two cities at the same resolution may not share a hexagon: a cell would not
    say which model answers it.
    """
    if not members:
        raise ValueError("a multi-city bundle needs at least one city")
    prepared = {}
    for city, member in members.items():
        _check_city_id(city)
        model, features, manifest = member
        try:
            prepared[city] = (*_prepared(model, features, manifest), manifest)
        except ValueError as error:
            raise ValueError(f"city {city}: {error}") from error
    _check_disjoint({city: (item[3].h3_resolution, item[2]) for city, item in prepared.items()})
    entries = [_cities_entry(city, manifest) for city, (_b, _s, _c, manifest) in prepared.items()]

    def fill(staging: Path) -> None:
        for city, (booster, snapshot, _cells, manifest) in prepared.items():
            member_dir = staging / CITIES_DIR / city
            member_dir.mkdir(parents=True)
            _save(member_dir, booster, snapshot, manifest)
        document = {"format": CITY_BUNDLE_FORMAT, "created_at": _now_iso(), "members": entries}
        (staging / CITIES_FILE).write_text(json.dumps(document, indent=2) + "\n")

    return _replace_atomically(Path(directory), fill)


def _prepared(
    model: xgb.XGBRegressor, features: pd.DataFrame, manifest: Manifest
) -> tuple[xgb.Booster, pd.DataFrame, np.ndarray]:
    """``(booster, snapshot to write, unique cells)`` of a valid member, else ValueError."""
    booster = model.get_booster()
    _booster_feature_names(booster, manifest)
    cells, _, _ = _snapshot_arrays(features, manifest)  # the server checks it again on load
    snapshot = features[[*KEY_COLUMNS, *manifest.feature_names]].copy()
    snapshot["h3_cell"] = snapshot["h3_cell"].astype("string")
    snapshot["hour_start"] = snapshot["hour_start"].dt.tz_convert("UTC")
    snapshot = snapshot.sort_values(list(KEY_COLUMNS), ignore_index=True)
    return booster, snapshot, np.unique(cells)


def _save(
    directory: Path, booster: xgb.Booster, snapshot: pd.DataFrame, manifest: Manifest
) -> None:
    booster.save_model(directory / MODEL_FILE)
    snapshot.to_parquet(directory / FEATURES_FILE, index=False)
    (directory / MANIFEST_FILE).write_text(manifest.to_json())


def _is_bundle(directory: Path) -> bool:
    return (directory / MANIFEST_FILE).is_file() or (directory / CITIES_FILE).is_file()


def _replace_atomically(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` on a staging directory next to ``directory``, then rename it into place."""
    if directory.exists() and (
        not directory.is_dir() or (any(directory.iterdir()) and not _is_bundle(directory))
    ):
        raise FileExistsError(f"{directory} exists and is not a bundle; not replacing it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        fill(staging)
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


def _check_city_id(city: object) -> None:
    if not isinstance(city, str) or not CITY_ID.match(city):
        raise ValueError(
            f"city id must be a lowercase slug (letters, digits, single hyphens), got {city!r}"
        )


def _check_disjoint(cells_by_city: Mapping[str, tuple[int, np.ndarray]]) -> None:
    """Refuse two cities at one resolution sharing an active hexagon (routing would guess)."""
    cities = list(cells_by_city)
    for i, first in enumerate(cities):
        for second in cities[i + 1 :]:
            (level_a, cells_a), (level_b, cells_b) = cells_by_city[first], cells_by_city[second]
            if level_a != level_b:
                continue  # cells of different resolutions are different integers
            shared = np.intersect1d(cells_a, cells_b, assume_unique=True)
            if len(shared):
                example = cells_to_strings(shared[:3]).tolist()
                raise ValueError(
                    f"cities {first} and {second} share {len(shared)} active hexagons at "
                    f"resolution {level_a}, e.g. {example}: each hexagon needs one owner"
                )


def _cities_entry(city: str, manifest: Manifest) -> dict:
    return {
        "city": city,
        "path": f"{CITIES_DIR}/{city}",
        "model_name": manifest.model_name,
        "model_version": manifest.model_version,
        "h3_resolution": manifest.h3_resolution,
    }


def read_cities(directory: Path) -> list[dict]:
    """The member entries of a multi-city bundle's ``cities.json``, checked, in routing order."""
    path = Path(directory) / CITIES_FILE
    try:
        document = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != CITY_BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a format {CITY_BUNDLE_FORMAT} multi-city bundle file")
    entries = document.get("members")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path} lists no members")
    seen = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: a member is not an object: {entry!r}")
        city = entry.get("city")
        _check_city_id(city)
        if city in seen:
            raise ValueError(f"{path} lists city {city} twice")
        seen.add(city)
        if entry.get("path") != f"{CITIES_DIR}/{city}":
            raise ValueError(f"{path}: member {city} must live in {CITIES_DIR}/{city}")
    return entries


def bundle_files(directory: Path) -> list[str]:
    """Every file of a bundle of either layout, relative to it; FileNotFoundError if any lacks."""
    directory = Path(directory)
    if (directory / CITIES_FILE).is_file():
        names = [CITIES_FILE]
        for entry in read_cities(directory):
            names += [f"{entry['path']}/{name}" for name in BUNDLE_FILES]
    else:
        names = list(BUNDLE_FILES)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a bundle: it lacks {missing}")
    return names


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive members without the builder's user names, readable by any container user."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def tar_bundle(directory: Path, archive: Path) -> Path:
    """Pack the bundle's files at the root of a gzipped tar (SageMaker's ``model.tar.gz``);
    a multi-city bundle keeps its ``cities/<city_id>/`` folders."""
    directory, archive = Path(directory), Path(archive)
    names = bundle_files(directory)
    archive.parent.mkdir(parents=True, exist_ok=True)
    staging = archive.parent / f".{archive.name}.tmp-{uuid.uuid4().hex}"
    try:
        with tarfile.open(staging, "w:gz") as tar:
            for name in names:
                tar.add(directory / name, arcname=name, filter=_owned_by_root)
        os.replace(staging, archive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
    return archive


def load_bundle(directory: Path, prediction_threads: int = 1) -> LoadedBundle | MultiCityBundle:
    """Read and check a bundle, and index its snapshot for batch lookups.

    A directory with ``cities.json`` loads as a ``MultiCityBundle``, any other as a single
    ``LoadedBundle``. ``prediction_threads`` is XGBoost's ``nthread``: one per server process
    by default, since OpenMP's start-up cost dwarfs a small batch (a one-row prediction took
    ~30x longer with two threads on the 2-core benchmark machine); scale with server workers.
    """
    directory = Path(directory)
    if (directory / CITIES_FILE).is_file():
        return _load_city_bundle(directory, prediction_threads)
    return _load_single(directory, prediction_threads)


def _load_city_bundle(directory: Path, prediction_threads: int) -> MultiCityBundle:
    members = {}
    for entry in read_cities(directory):
        city = entry["city"]
        try:
            member = _load_single(directory / entry["path"], prediction_threads)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"city {city}: {error}") from error
        manifest = member.manifest
        listed = (entry.get("model_name"), str(entry.get("model_version")))
        if listed != (manifest.model_name, manifest.model_version):
            raise ValueError(
                f"{CITIES_FILE} lists {city} as {listed}, but its manifest says "
                f"{(manifest.model_name, manifest.model_version)}"
            )
        members[city] = member
    return MultiCityBundle(members)


def _load_single(directory: Path, prediction_threads: int) -> LoadedBundle:
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
