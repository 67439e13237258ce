"""IO managers on local disk or S3 (any S3-compatible endpoint), via universal-pathlib:
Parquet for every table, pickle for the few Python objects (trained models, evaluations)."""

from __future__ import annotations

import os
import pickle
import typing
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import IO, Any

import dagster as dg
import pandas as pd
from upath import UPath

from geo_busyness.resources.settings import default_data_dir


def storage_path(
    base_path: str, s3_endpoint_url: str | None = None, s3_region: str | None = None
) -> UPath:
    """A local directory, or ``s3://bucket/prefix`` on any S3-compatible endpoint."""
    if not base_path.startswith("s3://"):
        return UPath(base_path)
    client_kwargs = {}
    if s3_endpoint_url:
        client_kwargs["endpoint_url"] = s3_endpoint_url
    if s3_region:
        client_kwargs["region_name"] = s3_region
    return UPath(base_path, client_kwargs=client_kwargs)


def write_atomically(path: UPath, write: Callable[[IO[bytes]], None]) -> None:
    """Local files are written to a temporary name and renamed into place, so a crash never
    leaves a truncated file; an S3 PUT is atomic by itself."""
    if path.protocol in ("", "file", "local"):
        temporary = path.parent / f".tmp-{uuid.uuid4().hex}{path.suffix}"
        try:
            with open(str(temporary), "wb") as handle:
                write(handle)
            os.replace(str(temporary), str(path))
        finally:
            temporary.unlink(missing_ok=True)
    else:
        with path.open("wb") as handle:
            write(handle)


def _is_dict_type(annotation: Any) -> bool:
    """Whether an input is annotated as a dict (``dict``, ``dict[str, X]``, a ``Mapping``): such
    an input always gets ``{partition: value}``. Written here because Dagster's own check
    (``upath_io_manager.is_dict_type``) is not public API."""
    return annotation is dict or typing.get_origin(annotation) in (dict, Mapping)


class ParquetIOManager(dg.UPathIOManager):
    """Stores each asset (partition) as one Parquet file.

    Writes are atomic (:func:`write_atomically`). Inputs may ask for a subset of columns
    with ``AssetIn(metadata={"columns": [...]})``, and a ``dict`` annotated input always gets a
    dict keyed by partition, even when the mapping yields a single partition.
    """

    extension: str = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected a DataFrame"
            )
        write_atomically(path, lambda handle: obj.to_parquet(handle, index=False))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        columns = (context.definition_metadata or {}).get("columns")
        with path.open("rb") as handle:
            return pd.read_parquet(handle, columns=columns)

    def load_partitions(self, context: dg.InputContext) -> Any:
        """Load the mapped partitions; with ``allow_missing_partitions``, list the asset's folder
        once and read only the partitions that exist (a mapping over every day since the start
        would otherwise try, and log, one failed read per absent day). With ``lazy``, return
        one loader per partition instead, so the asset reads only the partitions it needs."""
        metadata = context.definition_metadata or {}
        paths = self._get_paths_for_partitions(context)
        if metadata.get("allow_missing_partitions", False) and paths:
            folder = next(iter(paths.values())).parent
            present = {child.name for child in folder.iterdir()} if folder.exists() else set()
            paths = {key: path for key, path in paths.items() if path.name in present}
        if metadata.get("lazy", False):
            return {key: partial(self.load_from_path, context, path) for key, path in paths.items()}
        loaded = {key: self.load_from_path(context, path) for key, path in paths.items()}
        if (
            _is_dict_type(context.dagster_type.typing_type)
            or len(context.asset_partition_keys) != 1
        ):
            return loaded
        return next(iter(loaded.values()), None)

    def get_metadata(self, context: dg.OutputContext, obj: pd.DataFrame) -> dict[str, Any]:
        return {"dagster/row_count": len(obj)}


class PickleIOManager(dg.UPathIOManager):
    """Python objects (a trained model with its baselines, an evaluation) as pickle files.

    Only for objects this code location wrote itself: unpickling runs code, so the storage
    must be as trusted as the code.
    """

    extension: str = ".pickle"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        write_atomically(
            path, lambda handle: pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
        )

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        """The object; ``None`` for an input with ``metadata={"optional": True}`` whose asset
        was never materialized (e.g. a city without a champion yet)."""
        if (context.definition_metadata or {}).get("optional") and not path.exists():
            return None
        with path.open("rb") as handle:
            return pickle.load(handle)


class _StorageConfig(dg.ConfigurableIOManagerFactory):
    """``base_path`` is a directory or ``s3://bucket/prefix``; S3 credentials come from the AWS default chain."""

    base_path: str = str(default_data_dir() / "assets")
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def _base(self) -> UPath:
        return storage_path(self.base_path, self.s3_endpoint_url, self.s3_region)


class ParquetIOManagerResource(_StorageConfig):
    def create_io_manager(self, context) -> ParquetIOManager:
        return ParquetIOManager(base_path=self._base())


class PickleIOManagerResource(_StorageConfig):
    def create_io_manager(self, context) -> PickleIOManager:
        return PickleIOManager(base_path=self._base())
