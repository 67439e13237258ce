"""Forecasts → response bodies (JSON or CSV), and the choice between them from ``Accept``.

Bodies are assembled by Arrow's string kernels from per-row strings the snapshot formatted
at load, so a 10,000-row response costs about a millisecond and no Python loop. Busyness is
written as the shortest text that reads back to the same float32, so a client that parses it
recovers exactly what the model predicted.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from geo_busyness.serving.bundle import Manifest
from geo_busyness.serving.inference import Forecast
from geo_busyness.serving.requests import CSV_MEDIA_TYPE, JSON_MEDIA_TYPE, RequestError

CSV_HEADER = "h3_cell,hour_start,busyness"
# Accept's media ranges, by what each is answered with.
_ANSWERS = {
    JSON_MEDIA_TYPE: JSON_MEDIA_TYPE,
    "application/*": JSON_MEDIA_TYPE,
    "*/*": JSON_MEDIA_TYPE,
    CSV_MEDIA_TYPE: CSV_MEDIA_TYPE,
    "text/*": CSV_MEDIA_TYPE,
}


def negotiate(accept: str | None) -> str:
    """The response media type for an ``Accept`` header: the first range we can answer.

    No header means JSON. Quality values are not ranked, only ``q=0`` (refusal) is honoured.
    """
    if not accept or not accept.strip():
        return JSON_MEDIA_TYPE
    for part in accept.split(","):
        media, *params = (piece.strip().lower() for piece in part.split(";"))
        if media in _ANSWERS and not any(p.replace(" ", "") in ("q=0", "q=0.0") for p in params):
            return _ANSWERS[media]
    raise RequestError(
        406,
        f"cannot answer Accept {accept!r}: responses are {JSON_MEDIA_TYPE} or {CSV_MEDIA_TYPE}",
        field="Accept",
    )


def _join(rows: pa.Array, separator: str) -> str:
    """Every string of ``rows`` joined by ``separator`` in one kernel call."""
    whole = pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows)
    return pc.binary_join(whole, separator)[0].as_py() or ""


def _busyness_text(result: Forecast) -> pa.Array:
    return pa.array(result.busyness, type=pa.float32()).cast(pa.string())


def json_body(result: Forecast, manifest: Manifest, inference_id: str) -> bytes:
    """``{"predictions": [{h3_cell, hour_start, busyness}...], model_version, model_name,
    inference_id}``; cells and hours are hex and ISO text, which need no JSON escaping."""
    items = pc.binary_join_element_wise(
        '{"h3_cell":"',
        result.cells,
        '","hour_start":"',
        result.hours,
        '","busyness":',
        _busyness_text(result),
        "}",
        "",
    )
    tail = json.dumps(
        {
            "model_version": manifest.model_version,
            "model_name": manifest.model_name,
            "inference_id": inference_id,
        }
    )
    return f'{{"predictions":[{_join(items, ",")}],{tail[1:]}'.encode()


def csv_body(result: Forecast) -> bytes:
    """``h3_cell,hour_start,busyness`` rows with a header line."""
    rows = pc.binary_join_element_wise(result.cells, result.hours, _busyness_text(result), ",")
    return f"{CSV_HEADER}\n{_join(rows, chr(10))}\n".encode()


def error_body(error: RequestError, inference_id: str) -> bytes:
    return json.dumps({"error": error.to_dict(), "inference_id": inference_id}).encode()
