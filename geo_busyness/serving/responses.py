"""Forecasts → response bodies (JSON or CSV), and the choice between them from ``Accept``.

Bodies are assembled by Arrow's string kernels from per-row strings the snapshot formatted
at load, so a 10,000-row response costs about a millisecond and no Python loop. Busyness is
written as the shortest text that reads back to the same float32, so a client that parses it
recovers exactly what the model predicted.

A multi-city bundle's predictions also carry the ``city`` and ``model_version`` that answered
each (JSON fields, two more CSV columns), and the JSON body adds ``model_versions`` and
``model_names`` maps by city next to the combined ``model_version``/``model_name`` labels.
A single-city body is unchanged.
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.compute as pc

from geo_busyness.serving.bundle import Manifest, MultiCityBundle
from geo_busyness.serving.inference import Forecast
from geo_busyness.serving.requests import CSV_MEDIA_TYPE, JSON_MEDIA_TYPE, RequestError

CSV_HEADER = "h3_cell,hour_start,busyness"
CITY_CSV_HEADER = f"{CSV_HEADER},city,model_version"
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


def _encoded(values: pa.Array, encode) -> pa.Array:
    """``encode`` applied to each distinct value (a few cities), then spread to every row."""
    encoded = pc.dictionary_encode(values)
    dictionary = pa.array([encode(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return dictionary.take(encoded.indices)


def _csv_field(value: str) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([value])
    return out.getvalue()


def json_body(result: Forecast, manifest: Manifest | MultiCityBundle, inference_id: str) -> bytes:
    """``{"predictions": [{h3_cell, hour_start, busyness}...], model_version, model_name,
    inference_id}``; cells and hours are hex and ISO text, which need no JSON escaping.

    For a multi-city bundle (``manifest`` is the ``MultiCityBundle``) each prediction adds
    ``city`` and ``model_version``, escaped once per distinct value.
    """
    parts = [
        '{"h3_cell":"',
        result.cells,
        '","hour_start":"',
        result.hours,
        '","busyness":',
        _busyness_text(result),
    ]
    if result.cities is not None and result.model_versions is not None:
        parts += [
            ',"city":',
            _encoded(result.cities, json.dumps),
            ',"model_version":',
            _encoded(result.model_versions, json.dumps),
        ]
    if result.contributions is not None:
        parts += [',"contributions":', result.contributions]
    items = pc.binary_join_element_wise(*parts, "}", "")
    fields = {"model_version": manifest.model_version, "model_name": manifest.model_name}
    if isinstance(manifest, MultiCityBundle):
        fields["model_versions"] = manifest.model_versions
        fields["model_names"] = manifest.model_names
    tail = json.dumps({**fields, "inference_id": inference_id})
    return f'{{"predictions":[{_join(items, ",")}],{tail[1:]}'.encode()


def csv_body(result: Forecast) -> bytes:
    """``h3_cell,hour_start,busyness`` rows with a header line (``,city,model_version`` more
    for a multi-city bundle)."""
    columns = [result.cells, result.hours, _busyness_text(result)]
    header = CSV_HEADER
    if result.cities is not None and result.model_versions is not None:
        columns += [
            _encoded(result.cities, _csv_field),
            _encoded(result.model_versions, _csv_field),
        ]
        header = CITY_CSV_HEADER
    rows = pc.binary_join_element_wise(*columns, ",")
    return f"{header}\n{_join(rows, chr(10))}\n".encode()


def error_body(error: RequestError, inference_id: str) -> bytes:
    return json.dumps({"error": error.to_dict(), "inference_id": inference_id}).encode()
