"""Monitoring resources: where human-readable reports are kept, and the drift thresholds that
call for retraining.

Reports (Evidently HTML) and the pictures of asset metadata (maps, plots) are files, not
assets: they are written next to the data, on local disk or S3 like the IO managers, and linked
from the asset metadata. Where the store is served over HTTP (``public_url``: the report server
``geo-busyness ui`` starts for the local store, or a bucket's web address), links open in a
browser and pictures show on the asset page itself: the Dagster UI renders Markdown metadata
inline only under 1,000 characters, so a short image link shows where a base64 PNG hides
behind "[Show Markdown]" (the fallback when the store has no HTTP address).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import quote

import dagster as dg
from pydantic import Field
from upath import UPath

from geo_busyness.core.drift import DriftThresholds
from geo_busyness.core.plots import markdown_image
from geo_busyness.resources.io_manager import storage_path, write_atomically
from geo_busyness.resources.settings import default_data_dir

_THRESHOLDS = DriftThresholds()
# Where `geo-busyness ui` serves a local report store (next to Dagster's 3000 and MLflow's 5000).
LOCAL_REPORTS_URL = "http://127.0.0.1:3001"


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
    public_url: str | None = Field(
        default=None,
        description="HTTP address where base_path is served (e.g. http://127.0.0.1:3001, the "
        "report server of `geo-busyness ui`); links and inline pictures use it. None: links are "
        "file:// or s3:// locations and pictures are embedded.",
    )

    @property
    def is_s3(self) -> bool:
        return self.base_path.startswith("s3://")

    def _base(self) -> UPath:
        return storage_path(self.base_path, self.s3_endpoint_url, self.s3_region)

    def save(self, relative_path: str, content: bytes, content_type: str) -> str:
        """Write ``content`` at ``relative_path`` under ``base_path``, replacing any previous
        version, and return its location: its ``public_url`` address when the store is served,
        else a ``file://`` URI or ``s3://bucket/key``.

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
            location = f"s3://{path.path}"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda handle: handle.write(content))
            location = path.absolute().as_uri()
        if self.public_url:
            return f"{self.public_url.rstrip('/')}/{'/'.join(quote(part) for part in parts)}"
        return location

    def picture(self, relative_path: str, png: bytes, alt: str) -> dg.MetadataValue:
        """Markdown metadata showing ``png``: saved in the store and linked by its HTTP address
        (shown inline on the asset page), else embedded as a data URI (behind a click)."""
        if not self.public_url:
            return dg.MetadataValue.md(markdown_image(png, alt))
        return dg.MetadataValue.md(f"![{alt}]({self.save(relative_path, png, 'image/png')})")


def report_link(location: str) -> dg.MetadataValue:
    """A clickable link for ``http(s)://`` locations; the plain location (to copy) for
    ``file://`` and ``s3://``, which a browser refuses to open from the Dagster UI's page."""
    if location.startswith(("http://", "https://")):
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
