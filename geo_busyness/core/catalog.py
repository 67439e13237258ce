"""The city catalog: which cities are served, read from a ``cities.yaml``.

Cities are configuration, not code, so serving another city is a catalog edit. The catalog is
validated strictly when loaded: a typo in a field name or a time zone must fail loudly at
start-up, naming the file, the city and the field, rather than silently build a wrong city.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from geo_busyness.core.city import CITY_ID, City
from geo_busyness.core.geo import haversine_km
from geo_busyness.resources.settings import CITIES_ENV

FIELDS = (
    "id",
    "name",
    "center",
    "service_radius_km",
    "service_area",
    "timezone",
    "h3_resolution",
    "restaurant_clusters",
    "first_day",
    "implausible_distance_km",
)
REQUIRED = ("id", "name", "center", "timezone", "h3_resolution")
MIN_IMPLAUSIBLE_KM = 50.0


class _Loader(yaml.SafeLoader):
    """Safe YAML that keeps timestamps as text: PyYAML raises a bare ``ValueError`` on a bad
    date like ``2016-02-30``, we want the file, city and field in the message."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the file, the city and the field."""


class UnknownCityError(CatalogError, KeyError):
    """A city id that is not in the catalog (also a ``KeyError``, for mapping-style callers)."""

    __str__ = BaseException.__str__  # KeyError would quote the message


@dataclass(frozen=True)
class Catalog:
    """The validated cities of one catalog file, in file order."""

    path: str
    cities: tuple[City, ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(city.id for city in self.cities)

    def get(self, city_id: str) -> City:
        for city in self.cities:
            if city.id == city_id:
                return city
        raise UnknownCityError(
            f"{self.path}: no city {city_id!r}; known cities: {', '.join(self.ids)}"
        )

    def __iter__(self) -> Iterator[City]:
        return iter(self.cities)

    def __len__(self) -> int:
        return len(self.cities)

    def __contains__(self, city_id: object) -> bool:
        return city_id in self.ids


def default_catalog_path() -> Path:
    """The ``cities.yaml`` shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "cities.yaml"


def catalog_path() -> Path:
    """``$GEO_BUSYNESS_CITIES`` when set, else the packaged default."""
    configured = os.environ.get(CITIES_ENV)
    return Path(configured).expanduser() if configured else default_catalog_path()


def load_configured_catalog() -> Catalog:
    """The catalog the platform runs with (see :func:`catalog_path`)."""
    origin = f"set by {CITIES_ENV}" if os.environ.get(CITIES_ENV) else None
    return load_catalog(catalog_path(), origin=origin)


def load_catalog(path: str | os.PathLike[str], *, origin: str | None = None) -> Catalog:
    """Read and validate a catalog; ``origin`` says where the path came from, for errors."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f" ({origin})" if origin else ""
        raise CatalogError(f"{where}: city catalog not found{hint}") from None
    except OSError as error:
        raise CatalogError(f"{where}: cannot read the city catalog: {error}") from None
    try:
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as error:
        raise CatalogError(f"{where}: not valid YAML: {error}") from None
    if document is None:
        raise CatalogError(f"{where}: the catalog is empty; it needs a `cities:` list")
    if not isinstance(document, dict):
        raise CatalogError(f"{where}: expected a mapping with a `cities:` list at the top")
    extra = sorted(str(key) for key in document if key != "cities")
    if extra:
        raise CatalogError(f"{where}: unknown top-level field(s) {extra}; only `cities` is known")
    entries = document.get("cities")
    if not entries:
        raise CatalogError(f"{where}: cities: the catalog lists no city")
    if not isinstance(entries, list):
        raise CatalogError(f"{where}: cities: expected a list of cities")
    cities: list[City] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        city = _parse_city(entry, index, where, path.parent)
        if city.id in seen:
            raise CatalogError(
                f"{where}: city {city.id!r}: id: duplicate, city #{seen[city.id]} has it too"
            )
        seen[city.id] = index
        cities.append(city)
    return Catalog(path=where, cities=tuple(cities))


def city_fingerprint(city: City) -> str:
    """12 hex characters over every field that changes what is built for the city.

    Used as a Dagster ``code_version``: moving the centre or changing the resolution marks the
    city's assets stale; renaming it or moving its first day (which days exist, not what a day
    holds) does not.
    """
    payload: dict[str, Any] = {}
    for field in fields(City):
        if field.name in ("name", "first_day", "first_landed_day"):
            continue
        value = getattr(city, field.name)
        if field.type == "float":
            value = float(value)  # 12 and 12.0 are the same radius
        elif isinstance(value, dt.date):
            value = value.isoformat()
        elif value is not None and field.name == "service_area":
            value = [[float(lat), float(lon)] for lat, lon in value]
        payload[field.name] = value
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:12]


def catalog_yaml(cities: Iterable[City]) -> str:
    """The catalog text of ``cities`` (what :func:`load_catalog` reads back), for catalogs
    made in code. Cities with a ``service_area`` polygon are refused: the catalog references
    polygons by GeoJSON file."""
    entries = []
    for city in cities:
        if city.service_area:
            raise ValueError(f"{city.id}: a service_area polygon is written as a GeoJSON file")
        entry: dict[str, Any] = {
            "id": city.id,
            "name": city.name,
            "center": [city.center_lat, city.center_lon],
            "service_radius_km": city.service_radius_km,
            "implausible_distance_km": city.implausible_distance_km,
            "timezone": city.timezone,
            "h3_resolution": city.h3_resolution,
            "restaurant_clusters": city.n_restaurant_clusters,
        }
        if city.first_day:
            entry["first_day"] = city.first_day.isoformat()
        entries.append(entry)
    return yaml.safe_dump({"cities": entries}, sort_keys=False)


# --- parsing ---------------------------------------------------------------------------------


def _parse_city(entry: object, index: int, where: str, base: Path) -> City:
    label = f"city #{index}"
    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
        label = f"city {entry['id']!r}"

    def fail(field: str, problem: str) -> CatalogError:
        return CatalogError(f"{where}: {label}: {field}: {problem}")

    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: {label}: expected a mapping of fields, got {entry!r}")
    unknown = sorted(str(key) for key in entry if key not in FIELDS)
    if unknown:
        raise fail(", ".join(unknown), f"unknown field(s); known fields are {', '.join(FIELDS)}")
    for field in REQUIRED:
        if entry.get(field) is None:
            raise fail(field, "required field is missing")
    if entry.get("service_radius_km") is None and entry.get("service_area") is None:
        raise fail("service_radius_km", "missing; give service_radius_km or service_area")

    city_id = entry["id"]
    if not isinstance(city_id, str) or not CITY_ID.match(city_id):
        raise fail("id", f"{city_id!r} is not a lowercase slug (letters, digits, single hyphens)")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"expected a non-empty text, got {name!r}")

    center = entry["center"]
    if not isinstance(center, list | tuple) or len(center) != 2:
        raise fail("center", f"expected [lat, lon], got {center!r}")
    lat = _number(center[0], fail, "center", "latitude")
    lon = _number(center[1], fail, "center", "longitude")
    if not -90 <= lat <= 90:
        raise fail("center", f"latitude {lat} is outside -90..90")
    if not -180 <= lon <= 180:
        raise fail("center", f"longitude {lon} is outside -180..180")

    timezone = entry["timezone"]
    if not isinstance(timezone, str) or not _is_time_zone(timezone):
        raise fail("timezone", f"{timezone!r} is not a known time zone")

    h3_resolution = _integer(entry["h3_resolution"], fail, "h3_resolution")
    if not 0 <= h3_resolution <= 15:
        raise fail("h3_resolution", f"{h3_resolution} is outside 0..15")

    clusters = _integer(entry.get("restaurant_clusters", 5), fail, "restaurant_clusters")
    if clusters < 1:
        raise fail("restaurant_clusters", f"{clusters} is not at least 1")

    first_day = _date(entry.get("first_day"), fail)

    area = None
    if entry.get("service_area") is not None:
        area = _service_area(entry["service_area"], base, fail)
    if entry.get("service_radius_km") is not None:
        radius = _number(entry["service_radius_km"], fail, "service_radius_km")
        if radius <= 0:
            raise fail("service_radius_km", f"{radius} is not greater than 0")
    else:
        assert area is not None
        vertex_lat, vertex_lon = zip(*area, strict=True)
        radius = float(haversine_km(lat, lon, vertex_lat, vertex_lon).max())

    if entry.get("implausible_distance_km") is not None:
        implausible = _number(entry["implausible_distance_km"], fail, "implausible_distance_km")
        if implausible < radius:
            raise fail(
                "implausible_distance_km",
                f"{implausible} is less than the service radius {radius:g} km",
            )
    else:
        implausible = max(MIN_IMPLAUSIBLE_KM, 4 * radius)

    try:
        return City(
            name=name,
            center_lat=lat,
            center_lon=lon,
            service_radius_km=radius,
            implausible_distance_km=implausible,
            timezone=timezone,
            h3_resolution=h3_resolution,
            n_restaurant_clusters=clusters,
            id=city_id,
            first_day=first_day,
            service_area=area,
        )
    except ValueError as error:  # City's own checks; the ones above should catch them first
        raise CatalogError(f"{where}: {label}: {error}") from None


def _number(value: object, fail, field: str, what: str = "value") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(field, f"{what} {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise fail(field, f"{what} {value!r} is not a finite number")
    return number


def _integer(value: object, fail, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"{value!r} is not a whole number")
    return value


def _date(value: object, fail) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        raise fail("first_day", f"{value!r} is a timestamp; expected a day, YYYY-MM-DD")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise fail("first_day", f"{value!r} is not a date (YYYY-MM-DD)")


def _is_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _service_area(value: object, base: Path, fail) -> tuple[tuple[float, float], ...]:
    """Outer ring of the GeoJSON polygon file ``value`` as ``(lat, lon)`` vertices."""
    if not isinstance(value, str):
        raise fail("service_area", f"expected the path of a GeoJSON file, got {value!r}")
    file = (base / value).expanduser()
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail("service_area", f"{file} not found") from None
    except (OSError, ValueError) as error:
        raise fail("service_area", f"{file} is not readable GeoJSON: {error}") from None

    def bad(problem: str) -> CatalogError:
        return fail("service_area", f"{file}: {problem}")

    geometry = document
    if isinstance(geometry, dict) and geometry.get("type") == "FeatureCollection":
        features = geometry.get("features")
        if not isinstance(features, list) or len(features) != 1:
            count = len(features) if isinstance(features, list) else 0
            raise bad(f"a FeatureCollection needs exactly one polygon feature, has {count}")
        geometry = features[0]
    if isinstance(geometry, dict) and geometry.get("type") == "Feature":
        geometry = geometry.get("geometry")
    if not isinstance(geometry, dict) or geometry.get("type") != "Polygon":
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        raise bad(f"expected a Polygon, got {kind!r}")
    rings = geometry.get("coordinates")
    if not isinstance(rings, list) or not rings:
        raise bad("the Polygon has no coordinates")
    if len(rings) > 1:
        raise bad("polygons with holes are not supported; give the outer ring only")
    ring = rings[0]
    if not isinstance(ring, list):
        raise bad("the Polygon's ring is not a list of [lon, lat] positions")
    vertices: list[tuple[float, float]] = []
    for position in ring:
        if (
            not isinstance(position, list)
            or len(position) < 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in position[:2])
        ):
            raise bad(f"position {position!r} is not [lon, lat]")
        lon, lat = float(position[0]), float(position[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise bad(f"position {position!r} is not [lon, lat] in range")
        vertices.append((lat, lon))
    if len(vertices) > 1 and vertices[0] == vertices[-1]:
        vertices.pop()  # GeoJSON rings repeat the first position at the end
    if len(set(vertices)) < 3:
        raise bad("the polygon needs at least 3 distinct vertices")
    return tuple(vertices)
