"""IO managers on local disk or S3 (any S3-compatible endpoint), via universal-pathlib:
Parquet for every table, pickle for the few Python objects (trained models, evaluations).

Tables that one step writes together (the clean and quarantined pings of a day) form a
*commit group* (:func:`commit_group`): each is written as a file of its own version
(``<day>.<run id>.parquet``), then one small commit record (``<group>/<day>.json``) naming the
pair is written atomically. Readers resolve the record, so they see both tables of one run or
both of the previous one, never a mix; the commit then removes the superseded versions.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import socket
import time
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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


TEMPORARY_PREFIX = ".tmp-"
# A temporary file whose writer cannot be told alive (written on another host, or by an older
# version of this module) is stale once it is this old.
STALE_TEMPORARY_SECONDS = 3600.0
_HOST = socket.gethostname()


def _is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def write_atomically(path: UPath, write: Callable[[IO[bytes]], None]) -> None:
    """Local files are written to a temporary name and renamed into place, so a crash never
    leaves a truncated file; an S3 PUT is atomic by itself.

    The temporary name carries the writer's host and process id
    (``.tmp-<host>-<pid>-<uuid><suffix>``): after each successful write, the temporary files
    of that folder whose writer is dead (a killed write) are removed
    (:func:`remove_stale_temporaries`)."""
    if _is_local(path):
        temporary = path.parent / (
            f"{TEMPORARY_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex}{path.suffix}"
        )
        try:
            with open(str(temporary), "wb") as handle:
                write(handle)
            os.replace(str(temporary), str(path))
        finally:
            temporary.unlink(missing_ok=True)
        remove_stale_temporaries(str(path.parent))
    else:
        with path.open("wb") as handle:
            write(handle)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: str, now: float | None = None) -> list[str]:
    """Remove the temporary files of killed writes from a local ``folder``: those written on
    this host by a process that no longer runs, and any older than
    :data:`STALE_TEMPORARY_SECONDS` (another host's, or of the older ``.tmp-<uuid>`` form).
    A write in progress (its process alive) is never touched. Returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMPORARY_PREFIX):
            continue
        parts = entry.name[len(TEMPORARY_PREFIX) :].rsplit("-", 2)
        try:
            if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
                stale = not _pid_alive(int(parts[1]))
            else:
                stale = now - entry.stat().st_mtime > STALE_TEMPORARY_SECONDS
            if stale:
                os.unlink(entry.path)
                removed.append(entry.name)
        except FileNotFoundError:  # removed meanwhile (its write finished, or another cleanup)
            continue
    return removed


# ---------------------------------------------------------------------------------------------
# Commit groups

COMMIT_GROUP = "geo_busyness/commit_group"


def commit_group(name: str, members: Sequence[str]) -> dict[str, Any]:
    """Definition metadata for each ``AssetOut`` of a multi-asset whose tables are published
    together: ``members`` are the outputs' asset names (the last part of their keys, which share
    their prefix). The commit record of a partition is ``<prefix>/<name>/<partition>.json``."""
    return {COMMIT_GROUP: {"name": name, "members": sorted(members)}}


def _group_of(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    group = (metadata or {}).get(COMMIT_GROUP)
    return group if isinstance(group, Mapping) else None


def _versioned(path: UPath, version: str) -> UPath:
    return path.with_name(f"{path.stem}.{version}{path.suffix}")


def _read_bytes(path: UPath) -> bytes:
    """The whole file; on S3 one GET (``cat_file``, no HEAD and no listing cache)."""
    if _is_local(path):
        with open(str(path), "rb") as handle:
            return handle.read()
    return path.fs.cat_file(path.path)


def _versions_of(path: UPath) -> list[UPath]:
    """The stored files of one partition: the plain ``<stem><suffix>`` and every
    ``<stem>.<version><suffix>``. On S3 one listing of that partition's prefix only."""
    stem, suffix = path.stem, path.suffix
    folder = path.parent
    if _is_local(path):
        try:
            names = [entry.name for entry in os.scandir(str(folder))]
        except FileNotFoundError:
            return []
    elif path.protocol in ("s3", "s3a"):
        names = [found.rsplit("/", 1)[-1] for found in path.fs.find(folder.path, prefix=f"{stem}.")]
    else:
        names = [child.name for child in folder.iterdir()]

    def matches(name: str) -> bool:
        if name == f"{stem}{suffix}":
            return True
        middle = name[len(stem) + 1 : -len(suffix)]
        return (
            name.startswith(f"{stem}.") and name.endswith(suffix) and middle and "." not in middle
        )

    return [folder / name for name in names if matches(name)]


def _remove(paths: list[UPath]) -> None:
    if not paths:
        return
    if _is_local(paths[0]):
        for path in paths:
            path.unlink(missing_ok=True)
    else:
        paths[0].fs.rm([path.path for path in paths])


@dataclass
class _Pin:
    """The commit record a reader resolved (member → file name) and the members it read."""

    files: dict[str, str]
    loaded: set[str] = field(default_factory=set)


class TableRewrittenError(RuntimeError):
    """A commit group was rewritten while a step read it: reading on would mix two runs."""


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

    The outputs of a commit group (:func:`commit_group`) are written as
    ``<day>.<run id>.parquet``; when the last of them is written, the commit record
    ``<group>/<day>.json`` (member → file) is written atomically and the partition's other
    versions (the previous pair, the orphans of a crashed write, a plain ``<day>.parquet``)
    are removed. A crash before the record leaves the previous pair in force. Readers resolve
    the record once per IO manager (a step, or an in-process run) and keep it: the tables of a
    group read by one step are of one run, or the step fails (:class:`TableRewrittenError`).
    A partition without a record is read from its plain path (tables written before).
    Writers of one partition do not overlap (the run queue's per-partition limit of 1).
    """

    extension: str = ".parquet"

    def __init__(self, base_path: UPath | None = None) -> None:
        super().__init__(base_path=base_path)
        self._root = base_path or UPath(".")
        # (record, version) → member → (plain path, versioned file) written so far
        self._pending: dict[tuple[str, str], dict[str, tuple[UPath, UPath]]] = {}
        self._pins: dict[str, _Pin] = {}
        self._written: dict[dg.AssetKey, UPath] = {}

    # ----- commit records

    def _record_path(self, key: dg.AssetKey, path: UPath, group: str) -> UPath:
        """``<prefix>/<group>/<partition>.json`` beside the member folders (``_.json`` for an
        unpartitioned group)."""
        folder = self._root.joinpath(*key.path[:-1], group)
        member_folder = str(self._root.joinpath(*key.path))
        text = str(path)
        if text.startswith(member_folder + "/"):
            return folder.joinpath(text[len(member_folder) + 1 : -len(path.suffix)] + ".json")
        return folder / "_.json"

    def _read_record(self, record: UPath) -> dict[str, str] | None:
        try:
            return dict(json.loads(_read_bytes(record))["files"])
        except FileNotFoundError:
            return None

    def _commit(self, record: UPath, version: str, written: dict[str, tuple[UPath, UPath]]) -> None:
        files = {name: file.name for name, (_, file) in sorted(written.items())}
        body = json.dumps(
            {
                "version": version,
                "files": files,
                "committed_at": datetime.datetime.now(datetime.UTC).isoformat(),
            },
            indent=1,
        ).encode()
        self.make_directory(record.parent)
        write_atomically(record, lambda handle: handle.write(body))
        self._pins[str(record)] = _Pin(files)
        # Published: every other version of these partitions is superseded.
        for plain, file in written.values():
            _remove([other for other in _versions_of(plain) if other.name != file.name])

    # ----- IO

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected a DataFrame"
            )

        def write(handle: IO[bytes]) -> None:
            obj.to_parquet(handle, index=False)

        group = _group_of(context.definition_metadata)
        if group is None:
            write_atomically(path, write)
            return
        version = context.run_id
        file = _versioned(path, version)
        write_atomically(file, write)
        self._written[context.asset_key] = file
        record = self._record_path(context.asset_key, path, group["name"])
        pending = self._pending.setdefault((str(record), version), {})
        pending[context.asset_key.path[-1]] = (path, file)
        if set(group["members"]) <= pending.keys():
            del self._pending[(str(record), version)]
            self._commit(record, version, pending)
            context.log.debug(f"Committed {sorted(pending)} of {version} in {record}")

    def _read(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        columns = (context.definition_metadata or {}).get("columns")
        with path.open("rb") as handle:
            return pd.read_parquet(handle, columns=columns)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        upstream = context.upstream_output
        group = _group_of(upstream.definition_metadata if upstream is not None else None)
        if group is None:
            return self._read(context, path)
        record = self._record_path(context.asset_key, path, group["name"])
        name = context.asset_key.path[-1]
        for _ in range(3):
            pin = self._pins.get(str(record))
            if pin is None:
                files = self._read_record(record)
                if files is None or name not in files:
                    return self._read(context, path)  # never committed: the plain file
                pin = self._pins[str(record)] = _Pin(files)
            try:
                frame = self._read(context, path.with_name(pin.files[name]))
            except FileNotFoundError:
                if pin.loaded - {name}:
                    raise TableRewrittenError(
                        f"{record} was rewritten while this step read "
                        f"{sorted(pin.loaded)} from it; run the step again"
                    ) from None
                del self._pins[str(record)]  # superseded meanwhile: resolve again
                continue
            pin.loaded.add(name)
            return frame
        raise TableRewrittenError(f"{record} kept changing while this step read it")

    def load_partitions(self, context: dg.InputContext) -> Any:
        """Load the mapped partitions; with ``allow_missing_partitions``, list the asset's folder
        once and read only the partitions that exist (a mapping over every day since the start
        would otherwise try, and log, one failed read per absent day; a partition of a commit
        group exists if its record does). With ``lazy``, return one loader per partition
        instead, so the asset reads only the partitions it needs."""
        metadata = context.definition_metadata or {}
        paths = self._get_paths_for_partitions(context)
        if metadata.get("allow_missing_partitions", False) and paths:
            folder = next(iter(paths.values())).parent
            present = {child.name for child in folder.iterdir()} if folder.exists() else set()
            upstream = context.upstream_output
            group = _group_of(upstream.definition_metadata if upstream is not None else None)
            if group is not None:
                records = self._root.joinpath(*context.asset_key.path[:-1], group["name"])
                if records.exists():
                    present |= {
                        child.name[: -len(".json")] + self.extension
                        for child in records.iterdir()
                        if child.name.endswith(".json")
                    }
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
        metadata: dict[str, Any] = {"dagster/row_count": len(obj)}
        file = self._written.pop(context.asset_key, None)
        if file is not None:
            metadata["path"] = dg.MetadataValue.path(str(file))
        return metadata


def committed_path(
    base_path: UPath | str, key: Sequence[str], partition: str | None = None
) -> UPath:
    """Where the committed table of ``key`` (and ``partition``) is stored: the file its commit
    record names, else the plain ``<key>/<partition>.parquet``. For tools and tests reading the
    storage directly; it looks for a record in the key's sibling folders."""
    base = base_path if isinstance(base_path, UPath) else UPath(base_path)
    plain = (
        base.joinpath(*key, f"{partition}.parquet")
        if partition is not None
        else base.joinpath(*key[:-1], f"{key[-1]}.parquet")
    )
    parent = base.joinpath(*key[:-1])
    record_name = f"{partition}.json" if partition is not None else "_.json"
    for folder in sorted(parent.iterdir()) if parent.exists() else []:
        record = folder / record_name
        if folder.name != key[-1] and record.exists():
            files = json.loads(_read_bytes(record)).get("files", {})
            if key[-1] in files:
                return plain.with_name(files[key[-1]])
    return plain


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
