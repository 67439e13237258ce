import datetime as dt
import json
from pathlib import Path

import pytest

from geo_busyness.core.catalog import (
    FIELDS,
    Catalog,
    CatalogError,
    catalog_path,
    city_fingerprint,
    default_catalog_path,
    load_catalog,
    load_configured_catalog,
)
from geo_busyness.core.city import City
from geo_busyness.core.geo import haversine_km
from geo_busyness.resources.settings import CITIES_ENV, ENVIRONMENT_VARIABLES

pytestmark = pytest.mark.unit

JERSEY = """\
  - id: jersey-city
    name: Jersey City, NJ
    center: [40.72, -74.05]
    service_radius_km: 6
    timezone: America/New_York
    h3_resolution: 8
    restaurant_clusters: 4
    first_day: 2016-04-01
"""
SQUARE = [[-74.10, 40.68], [-74.00, 40.68], [-74.00, 40.76], [-74.10, 40.76], [-74.10, 40.68]]


def write(tmp_path: Path, body: str, name: str = "cities.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def catalog_of(tmp_path: Path, *cities: str) -> Path:
    return write(tmp_path, "cities:\n" + "".join(cities))


def city(**overrides) -> str:
    """One catalog entry: jersey-city with fields replaced (None drops the field)."""
    fields = {
        "id": "jersey-city",
        "name": "Jersey City, NJ",
        "center": "[40.72, -74.05]",
        "service_radius_km": "6",
        "timezone": "America/New_York",
        "h3_resolution": "8",
    }
    fields.update(overrides)
    lines = [f"{key}: {value}" for key, value in fields.items() if value is not None]
    return "  - " + "\n    ".join(lines) + "\n"


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def polygon_file(tmp_path: Path, geojson: object, name: str = "area.geojson") -> str:
    (tmp_path / name).write_text(json.dumps(geojson))
    return name


def test_the_packaged_catalog_is_the_default_city():
    catalog = load_catalog(default_catalog_path())
    assert catalog.cities == (City(),)
    assert default_catalog_path().parent.name == "geo_busyness"


def test_a_full_entry_loads_every_field(tmp_path):
    catalog = load_catalog(catalog_of(tmp_path, JERSEY))
    assert isinstance(catalog, Catalog)
    assert catalog.ids == ("jersey-city",)
    assert len(catalog) == 1
    assert "jersey-city" in catalog
    assert catalog.get("jersey-city") == City(
        name="Jersey City, NJ",
        center_lat=40.72,
        center_lon=-74.05,
        service_radius_km=6.0,
        implausible_distance_km=50.0,
        timezone="America/New_York",
        h3_resolution=8,
        n_restaurant_clusters=4,
        id="jersey-city",
        first_day=dt.date(2016, 4, 1),
    )
    assert [c.id for c in catalog] == ["jersey-city"]
    assert catalog.path == str(tmp_path / "cities.yaml")


def test_defaults_and_quoted_dates(tmp_path):
    path = catalog_of(
        tmp_path, city(first_day="'2020-02-29'", service_radius_km="20"), city(id="b", name="B")
    )
    first, second = load_catalog(path)
    assert first.first_day == dt.date(2020, 2, 29)
    assert first.implausible_distance_km == 80.0  # 4 * radius beats 50
    assert first.n_restaurant_clusters == 5
    assert second.first_day is None
    assert second.implausible_distance_km == 50.0
    assert load_catalog(catalog_of(tmp_path, city(implausible_distance_km="7"))).cities[
        0
    ].implausible_distance_km == pytest.approx(7.0)


def test_get_names_the_known_cities(tmp_path):
    catalog = load_catalog(catalog_of(tmp_path, city(), city(id="regina", name="R")))
    with pytest.raises(CatalogError, match="no city 'paris'; known cities: jersey-city, regina"):
        catalog.get("paris")
    with pytest.raises(KeyError):
        catalog.get("paris")


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"timezone": "Mars/X"}, "timezone", "'Mars/X' is not a known time zone"),
        ({"timezone": "../etc/passwd"}, "timezone", "not a known time zone"),
        ({"h3_resolution": "16"}, "h3_resolution", "outside 0..15"),
        ({"h3_resolution": "-1"}, "h3_resolution", "outside 0..15"),
        ({"h3_resolution": "7.5"}, "h3_resolution", "not a whole number"),
        ({"h3_resolution": "seven"}, "h3_resolution", "not a whole number"),
        ({"h3_resolution": "true"}, "h3_resolution", "not a whole number"),
        ({"service_radius_km": "0"}, "service_radius_km", "not greater than 0"),
        ({"service_radius_km": "-3"}, "service_radius_km", "not greater than 0"),
        ({"service_radius_km": "wide"}, "service_radius_km", "not a number"),
        ({"service_radius_km": ".inf"}, "service_radius_km", "not a finite number"),
        ({"restaurant_clusters": "0"}, "restaurant_clusters", "not at least 1"),
        ({"restaurant_clusters": "2.5"}, "restaurant_clusters", "not a whole number"),
        ({"center": "[40.72]"}, "center", "expected [lat, lon]"),
        ({"center": "40.72"}, "center", "expected [lat, lon]"),
        ({"center": "[95, -74.05]"}, "center", "latitude 95.0 is outside -90..90"),
        ({"center": "[40.72, -200]"}, "center", "longitude -200.0 is outside -180..180"),
        ({"center": "[north, -74]"}, "center", "latitude 'north' is not a number"),
        ({"first_day": "2016-02-30"}, "first_day", "is not a date"),
        ({"first_day": "'yesterday'"}, "first_day", "is not a date"),
        ({"first_day": "2016-04-01 10:00:00"}, "first_day", "is not a date"),
        ({"first_day": "[2016]"}, "first_day", "is not a date"),
        ({"implausible_distance_km": "3"}, "implausible_distance_km", "less than the service"),
        ({"name": "''"}, "name", "non-empty"),
        ({"colour": "red"}, "colour", "known fields are " + ", ".join(FIELDS)),
        ({"timezone": None}, "timezone", "required field is missing"),
        ({"h3_resolution": None}, "h3_resolution", "required field is missing"),
        ({"name": None}, "name", "required field is missing"),
        ({"center": None}, "center", "required field is missing"),
        ({"service_radius_km": None}, "service_radius_km", "give service_radius_km or service"),
    ],
)
def test_bad_fields_are_refused_naming_file_city_and_field(tmp_path, overrides, field, fragment):
    path = catalog_of(tmp_path, city(**overrides))
    refused(path, "city 'jersey-city'", f": {field}: ", fragment)


@pytest.mark.parametrize(
    ("city_id", "label", "fragment"),
    [
        ("Jersey_City", "city 'Jersey_City'", "'Jersey_City' is not a lowercase slug"),
        ("jersey--city", "city 'jersey--city'", "not a lowercase slug"),
        ("42", "city #1", "42 is not a lowercase slug"),
        (None, "city #1", "required field is missing"),
    ],
)
def test_bad_or_missing_ids_name_the_city_by_position(tmp_path, city_id, label, fragment):
    path = catalog_of(tmp_path, city(id=city_id))
    refused(path, f"{label}: id: ", fragment)


def test_a_city_without_id_is_named_by_its_position(tmp_path):
    path = catalog_of(tmp_path, city(), city(id=None, timezone="Mars/X"))
    refused(path, "city #2: id: required field is missing")


def test_duplicate_ids_are_refused(tmp_path):
    path = catalog_of(tmp_path, city(), city(name="Again"))
    refused(path, "city 'jersey-city': id: duplicate, city #1 has it too")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("", "the catalog is empty"),
        ("# nothing\n", "the catalog is empty"),
        ("cities: []\n", "cities: the catalog lists no city"),
        ("cities:\n", "cities: the catalog lists no city"),
        ("- id: x\n", "expected a mapping with a `cities:` list"),
        ("cities: {id: x}\n", "cities: expected a list of cities"),
        ("cities: []\ntowns: []\n", "unknown top-level field(s) ['towns']"),
        ("cities:\n  - [1, 2]\n", "city #1: expected a mapping of fields"),
        ("cities:\n  - id: x\n    name: [unclosed\n", "not valid YAML"),
        ("cities:\n\t- id: x\n", "not valid YAML"),
    ],
)
def test_malformed_catalogs_are_refused(tmp_path, body, fragment):
    refused(write(tmp_path, body), fragment)


def test_a_missing_file_names_the_environment_variable_it_came_from(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.yaml"
    refused(missing, "city catalog not found")
    with pytest.raises(CatalogError) as caught:
        load_catalog(missing)
    assert CITIES_ENV not in str(caught.value)
    monkeypatch.setenv(CITIES_ENV, str(missing))
    with pytest.raises(CatalogError, match=f"city catalog not found \\(set by {CITIES_ENV}\\)"):
        load_configured_catalog()


def test_the_environment_variable_chooses_the_catalog(tmp_path, monkeypatch):
    assert CITIES_ENV in ENVIRONMENT_VARIABLES
    assert catalog_path() == default_catalog_path()
    assert load_configured_catalog().cities == (City(),)
    path = catalog_of(tmp_path, JERSEY)
    monkeypatch.setenv(CITIES_ENV, str(path))
    assert catalog_path() == path
    assert load_configured_catalog().ids == ("jersey-city",)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda g: g,
        lambda g: {"type": "Feature", "properties": {}, "geometry": g},
        lambda g: {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {}, "geometry": g}],
        },
    ],
    ids=["geometry", "feature", "feature-collection"],
)
def test_service_area_polygons_load_as_lat_lon(tmp_path, wrap):
    name = polygon_file(tmp_path, wrap({"type": "Polygon", "coordinates": [SQUARE]}))
    (loaded,) = load_catalog(catalog_of(tmp_path, city(service_radius_km=None, service_area=name)))
    assert loaded.service_area == (
        (40.68, -74.10),
        (40.68, -74.00),
        (40.76, -74.00),
        (40.76, -74.10),
    )
    farthest = max(haversine_km(40.72, -74.05, lat, lon) for lat, lon in loaded.service_area)
    assert loaded.service_radius_km == pytest.approx(float(farthest))
    assert loaded.implausible_distance_km == 50.0


def test_service_area_is_relative_to_the_catalog_and_keeps_an_explicit_radius(tmp_path):
    (tmp_path / "areas").mkdir()
    polygon_file(tmp_path, {"type": "Polygon", "coordinates": [SQUARE]}, "areas/jc.json")
    (tmp_path / "conf").mkdir()
    path = write(tmp_path, "cities:\n" + city(service_area="../areas/jc.json"), "conf/c.yaml")
    (loaded,) = load_catalog(path)
    assert loaded.service_radius_km == 6.0
    assert len(loaded.service_area) == 4


@pytest.mark.parametrize(
    ("geojson", "fragment"),
    [
        ({"type": "Point", "coordinates": [-74, 40]}, "expected a Polygon, got 'Point'"),
        ({"type": "MultiPolygon", "coordinates": [[SQUARE]]}, "got 'MultiPolygon'"),
        (
            {"type": "Polygon", "coordinates": [SQUARE, SQUARE[:4]]},
            "polygons with holes are not supported",
        ),
        ({"type": "FeatureCollection", "features": []}, "exactly one polygon feature, has 0"),
        ({"type": "Polygon", "coordinates": []}, "has no coordinates"),
        ({"type": "Polygon", "coordinates": [SQUARE[:2] + SQUARE[:1]]}, "3 distinct vertices"),
        ({"type": "Polygon", "coordinates": [[[-74, 95], *SQUARE]]}, "in range"),
        ({"type": "Polygon", "coordinates": [[["x", 40], *SQUARE]]}, "is not [lon, lat]"),
        ([1, 2], "expected a Polygon, got 'list'"),
    ],
)
def test_bad_service_areas_are_refused(tmp_path, geojson, fragment):
    name = polygon_file(tmp_path, geojson)
    path = catalog_of(tmp_path, city(service_area=name))
    message = refused(path, "city 'jersey-city': service_area: ", fragment)
    assert "area.geojson" in message


def test_unreadable_service_area_files_are_refused(tmp_path):
    refused(
        catalog_of(tmp_path, city(service_area="gone.json")),
        "city 'jersey-city': service_area: ",
        "gone.json not found",
    )
    (tmp_path / "broken.json").write_text("{not json")
    refused(
        catalog_of(tmp_path, city(service_area="broken.json")),
        "service_area: ",
        "not readable GeoJSON",
    )
    refused(catalog_of(tmp_path, city(service_area="[1, 2]")), "service_area: expected the path")


def test_fingerprint_is_stable_short_and_ignores_only_the_name_and_first_day():
    base = City()
    fingerprint = city_fingerprint(base)
    assert len(fingerprint) == 12
    int(fingerprint, 16)
    assert city_fingerprint(City()) == fingerprint
    assert city_fingerprint(City(name="Regina")) == fingerprint
    assert city_fingerprint(City(service_radius_km=12)) == fingerprint  # int or float radius
    # which days exist is not what a day holds: moving the first day stales nothing
    assert city_fingerprint(City(first_day=dt.date(2026, 1, 1))) == fingerprint
    changed = [
        City(center_lat=50.45),
        City(center_lon=-104.6),
        City(service_radius_km=11.0),
        City(implausible_distance_km=60.0),
        City(timezone="America/Winnipeg"),
        City(h3_resolution=8),
        City(n_restaurant_clusters=6),
        City(id="regina-west"),
        City(service_area=((50.4, -104.7), (50.4, -104.5), (50.5, -104.6))),
    ]
    prints = {city_fingerprint(c) for c in changed}
    assert len(prints) == len(changed)
    assert fingerprint not in prints


def test_fingerprint_of_a_loaded_city_matches_the_same_city_built_in_code(tmp_path):
    (loaded,) = load_catalog(catalog_of(tmp_path, JERSEY))
    assert city_fingerprint(loaded) == city_fingerprint(
        City(
            name="other",
            center_lat=40.72,
            center_lon=-74.05,
            service_radius_km=6,
            implausible_distance_km=50,
            timezone="America/New_York",
            h3_resolution=8,
            n_restaurant_clusters=4,
            id="jersey-city",
            first_day=dt.date(2016, 4, 1),
        )
    )


def test_catalog_yaml_reads_back_as_the_same_cities(tmp_path):
    import dataclasses
    import datetime as dt

    from geo_busyness.core.catalog import catalog_yaml
    from geo_busyness.simulate import MULTI_CITIES

    cities = (
        *MULTI_CITIES[:2],
        dataclasses.replace(MULTI_CITIES[2], first_day=dt.date(2026, 3, 1)),
    )
    path = tmp_path / "cities.yaml"
    path.write_text(catalog_yaml(cities))
    assert load_catalog(path).cities == cities
    polygon = dataclasses.replace(
        MULTI_CITIES[0], service_area=((50.4, -104.7), (50.4, -104.5), (50.5, -104.6))
    )
    with pytest.raises(ValueError, match="GeoJSON file"):
        catalog_yaml([polygon])
