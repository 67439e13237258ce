"""Parquet IO manager on local disk or S3 (any S3-compatible endpoint), via universal-pathlib."""

from __future__ import annotations

import os
import uuid
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.storage.upath_io_manager import is_dict_type
from upath import UPath

from geo_busyness.resources.settings import default_data_dir


class ParquetIOManager(dg.UPathIOManager):
    """Stores each asset (partition) as one Parquet file.

    Local writes go to a temporary file that is renamed into place, so a crash never leaves a
    truncated partition; an S3 PUT is atomic by itself. Inputs may ask for a subset of columns
    with ``AssetIn(metadata={"columns": [...]})``, and a ``dict`` annotated input always gets a
    dict keyed by partition, even when the mapping yields a single partition.
    """

    extension: str = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected a DataFrame"
            )
        if path.protocol in ("", "file", "local"):
            temporary = path.parent / f".tmp-{uuid.uuid4().hex}{self.extension}"
            obj.to_parquet(str(temporary), index=False)
            os.replace(str(temporary), str(path))
        else:
            with path.open("wb") as handle:
                obj.to_parquet(handle, index=False)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        columns = (context.definition_metadata or {}).get("columns")
        with path.open("rb") as handle:
            return pd.read_parquet(handle, columns=columns)

    def load_partitions(self, context: dg.InputContext) -> Any:
        """Load the mapped partitions; with ``allow_missing_partitions``, list the asset's folder
        once and read only the partitions that exist (a mapping over every day since the start
        would otherwise try, and log, one failed read per absent day)."""
        paths = self._get_paths_for_partitions(context)
        if (context.definition_metadata or {}).get("allow_missing_partitions", False) and paths:
            folder = next(iter(paths.values())).parent
            present = {child.name for child in folder.iterdir()} if folder.exists() else set()
            paths = {key: path for key, path in paths.items() if path.name in present}
        loaded = {key: self.load_from_path(context, path) for key, path in paths.items()}
        if is_dict_type(context.dagster_type.typing_type) or len(context.asset_partition_keys) != 1:
            return loaded
        return next(iter(loaded.values()), None)

    def get_metadata(self, context: dg.OutputContext, obj: pd.DataFrame) -> dict[str, Any]:
        return {"dagster/row_count": len(obj)}


class ParquetIOManagerResource(dg.ConfigurableIOManagerFactory):
    """``base_path`` is a directory or ``s3://bucket/prefix``; S3 credentials come from the AWS default chain."""

    base_path: str = str(default_data_dir() / "assets")
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def create_io_manager(self, context) -> ParquetIOManager:
        options: dict[str, Any] = {}
        if self.base_path.startswith("s3://"):
            client_kwargs = {}
            if self.s3_endpoint_url:
                client_kwargs["endpoint_url"] = self.s3_endpoint_url
            if self.s3_region:
                client_kwargs["region_name"] = self.s3_region
            options["client_kwargs"] = client_kwargs
        return ParquetIOManager(base_path=UPath(self.base_path, **options))
