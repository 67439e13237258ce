"""Monitoring resources: where human-readable reports are kept, and the drift thresholds that
call for retraining.

Reports (Evidently HTML) are files, not assets: they are written next to the data, on local
disk or S3 like the IO managers, and linked from the asset metadata.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import dagster as dg
from pydantic import Field
from upath import UPath

from geo_busyness.core.drift import DriftThresholds
from geo_busyness.resources.io_manager import storage_path, write_atomically
from geo_busyness.resources.settings import default_data_dir

_THRESHOLDS = DriftThresholds()


class ReportStore(dg.ConfigurableResource):
    """A directory or ``s3://bucket/prefix`` for reports; S3 credentials come from the AWS
    default chain, as for ``ParquetIOManagerResource``."""

    base_path: str = Field(
        default=str(default_data_dir() / "reports"),
        description="Directory or s3://bucket/prefix where reports are written.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (SeaweedFS, MinIO…); default: AWS."
    )
    s3_region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.base_path.startswith("s3://")

    def _base(self) -> UPath:
        return storage_path(self.base_path, self.s3_endpoint_url, self.s3_region)

    def save(self, relative_path: str, content: bytes, content_type: str) -> str:
        """Write ``content`` at ``relative_path`` under ``base_path``, replacing any previous
        version, and return its location: a ``file://`` URI or ``s3://bucket/key``.

        Local writes are atomic (temporary file + rename); the S3 PUT carries
        ``content_type`` so a browser opening the object renders it.
        """
        parts = PurePosixPath(relative_path).parts
        if not parts or PurePosixPath(relative_path).is_absolute() or ".." in parts:
            raise ValueError(
                f"relative_path must be a relative path inside the store, got {relative_path!r}"
            )
        path = self._base().joinpath(*parts)
        if self.is_s3:
            path.fs.pipe_file(path.path, content, ContentType=content_type)
            return f"s3://{path.path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda handle: handle.write(content))
        return path.absolute().as_uri()


def report_link(location: str) -> dg.MetadataValue:
    """A clickable link for ``file://`` and ``http(s)://`` locations; the plain path for
    ``s3://``, which a browser cannot open."""
    if location.startswith(("file://", "http://", "https://")):
        return dg.MetadataValue.url(location)
    return dg.MetadataValue.path(location)


class DriftPolicy(dg.ConfigurableResource):
    """When drift_report's ``drift_within_threshold`` check warns (and retraining is due)."""

    max_drift_share: float = Field(
        default=_THRESHOLDS.max_drift_share,
        ge=0,
        le=1,
        description="Largest share of monitored features that may drift (0.5 = half of them).",
    )
    max_error_ratio: float = Field(
        default=_THRESHOLDS.max_error_ratio,
        gt=0,
        description="Largest forecast MAE, as a multiple of the model's test MAE at training time.",
    )

    def to_thresholds(self) -> DriftThresholds:
        return DriftThresholds(
            max_drift_share=self.max_drift_share, max_error_ratio=self.max_error_ratio
        )
