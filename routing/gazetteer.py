"""The offline gazetteer: China's administrative divisions from cpca's packaged adcode table.

Holds `Place` (one division with coordinates), `Gazetteer` (code, address and coordinate
look-ups) and `OfflineGeocoder` (the gazetteer behind geopy's geocoder interface, so an
online geopy geocoder can be configured in its place).
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from geopy.adapters import BaseSyncAdapter
from geopy.exc import GeocoderServiceError
from geopy.geocoders.base import DEFAULT_SENTINEL, Geocoder
from geopy.location import Location
from geopy.point import Point
from scipy.spatial import cKDTree

__all__ = ["Place", "Gazetteer", "OfflineGeocoder"]

EARTH_RADIUS_KM = 6371.0088

# Rows that name a grouping rather than a place; a full name reads better without them.
_PLACEHOLDERS = frozenset({"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"})
_CODE = re.compile(r"\d{6}(?:\d{6})?")


@dataclass(frozen=True, slots=True)
class Place:
    """One administrative division: 6-digit adcode, its own name and a representative point."""

    adcode: str
    name: str
    lat: float
    lon: float

    @property
    def province(self) -> str:
        return self.adcode[:2]

    @property
    def prefecture(self) -> str:
        return self.adcode[:4]

    @property
    def is_county(self) -> bool:
        return not self.adcode.endswith("00")


def _normalize(adcode: str) -> str | None:
    """The 6-digit division code of a 6- or 12-digit adcode, or None if malformed."""
    if not isinstance(adcode, str):
        return None
    adcode = adcode.strip()
    return adcode[:6] if _CODE.fullmatch(adcode) else None


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.column_stack((np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)))


@functools.lru_cache(maxsize=65536)
def _cpca_adcode(text: str) -> str | None:
    import cpca  # deferred: it pulls in pandas and its own tables, which most callers never need

    code = cpca.transform([text])["adcode"].iloc[0]
    return code if isinstance(code, str) and code else None


def _read_packaged_rows() -> Iterator[tuple[str, str, float | None, float | None]]:
    resource = importlib.resources.files("cpca") / "resources" / "adcodes.csv"
    with io.TextIOWrapper(resource.open("rb"), encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            lat, lon = row["latitude"].strip(), row["longitude"].strip()
            yield (row["adcode"], row["name"].strip(), float(lat) if lat else None, float(lon) if lon else None)


class Gazetteer:
    """Every 6-digit division code, resolvable by code, by address text or by coordinates.

    A code whose row has no coordinates is placed at the mean of its children that have
    some; a code with neither (e.g. the '市辖区' county-level rows) is not a place.
    """

    def __init__(self, rows: Iterable[tuple[str, str, float | None, float | None]] | None = None) -> None:
        """Load (adcode, name, lat, lon) rows; by default cpca's packaged table."""
        names: dict[str, str] = {}
        coords: dict[str, tuple[float, float]] = {}
        for adcode, name, lat, lon in _read_packaged_rows() if rows is None else rows:
            code = _normalize(adcode)
            if code is None:
                continue
            names[code] = name
            if lat is not None and lon is not None and math.isfinite(lat) and math.isfinite(lon):
                coords[code] = (lat, lon)
        self._names = names

        # Fill coordinate-less prefectures, then provinces, from the level below.
        for level in ("prefecture", "province"):
            members: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for code, point in coords.items():
                if level == "prefecture" and not code.endswith("00"):
                    members[code[:4] + "00"].append(point)
                elif level == "province" and code.endswith("00") and not code.endswith("0000"):
                    members[code[:2] + "0000"].append(point)
            for parent, points in members.items():
                if parent in names and parent not in coords:
                    coords[parent] = (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))

        self._places: dict[str, Place] = {
            code: Place(code, self._display_name(code), lat, lon) for code, (lat, lon) in sorted(coords.items())
        }
        self._counties = tuple(p for p in self._places.values() if p.is_county)
        # Prefecture-level cities with no county level beneath them (东莞市, 中山市, 嘉峪关市, 儋州市):
        # their own code is the finest there is, so they stand where a county would.
        with_counties = {p.prefecture for p in self._counties}
        self._finest = tuple(
            p
            for p in self._places.values()
            if p.is_county or (not p.adcode.endswith("0000") and p.prefecture not in with_counties)
        )
        self._finest_codes = frozenset(p.adcode for p in self._finest)
        if self._finest:
            self._tree = cKDTree(
                _unit_vectors(np.array([p.lat for p in self._finest]), np.array([p.lon for p in self._finest]))
            )
        else:
            self._tree = None

    @classmethod
    @functools.cache
    def default(cls) -> Gazetteer:
        """The shared gazetteer over cpca's table, loaded once per process."""
        return cls()

    def _display_name(self, code: str) -> str:
        name = self._names[code]
        # A municipality's '市辖区'/'县' prefecture row is the municipality itself.
        if name in ("市辖区", "县") and code.endswith("00"):
            return self._names.get(code[:2] + "0000", name)
        return name

    def locate(self, adcode: str) -> Place | None:
        """The place of a 6- or 12-digit adcode, or None when unknown or without coordinates."""
        code = _normalize(adcode)
        return None if code is None else self._places.get(code)

    def from_address(self, text: str) -> Place | None:
        """The most specific place cpca resolves in free Chinese address text."""
        if not isinstance(text, str) or not text.strip():
            return None
        code = _cpca_adcode(text.strip())
        if code is None:
            return None
        code = code[:6]
        # Some resolved codes (e.g. 定州市 139001) have no coordinates: fall back upwards.
        for candidate in (code, code[:4] + "00", code[:2] + "0000"):
            place = self._places.get(candidate)
            if place is not None:
                return place
        return None

    def is_finest(self, place: Place) -> bool:
        """A county, or a city with no county beneath it: a valid end of a route and issuer of passes."""
        return place.adcode in self._finest_codes

    def nearest(self, lat: float, lon: float, max_km: float = 60) -> Place | None:
        """The county (or city without counties) nearest to (lat, lon); None beyond max_km or for
        invalid coordinates."""
        try:
            lat, lon = float(lat), float(lon)
        except (TypeError, ValueError):
            return None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or self._tree is None:
            return None
        chord, index = self._tree.query(_unit_vectors(np.array([lat]), np.array([lon]))[0])
        km = 2.0 * math.asin(min(1.0, chord / 2.0)) * EARTH_RADIUS_KM
        return self._finest[int(index)] if km <= max_km else None

    def name(self, adcode: str) -> str:
        """Full name such as '湖北省武汉市洪山区'; KeyError for an unknown code."""
        code = _normalize(adcode)
        if code is None or code not in self._names:
            raise KeyError(adcode)
        parts = [code[:2] + "0000"]
        if not code.endswith("0000"):
            parts.append(code[:4] + "00")
        if not code.endswith("00"):
            parts.append(code)
        names = [self._names.get(p, "") for p in parts]
        return "".join(n for n in names if n and n not in _PLACEHOLDERS)

    def names_region(self, prefix: str) -> bool:
        """Whether a 2-, 4- or 6-digit adcode prefix names a province, prefecture or county of the
        table (what a risk level may be declared for)."""
        code = _region_code(prefix)
        return code is not None and code in self._names

    def region_name(self, prefix: str) -> str | None:
        """The full name of the region a 2-, 4- or 6-digit adcode prefix names (42: 湖北省,
        4201: 湖北省武汉市); None when it names none."""
        code = _region_code(prefix)
        return self.name(code) if code is not None and code in self._names else None

    def counties(self) -> tuple[Place, ...]:
        """County-level places with coordinates, in adcode order."""
        return self._counties

    def places(self) -> Iterable[Place]:
        """Every place with coordinates at any level, in adcode order."""
        return self._places.values()


class _NoNetworkAdapter(BaseSyncAdapter):
    """Pins the geocoder to sync mode and makes any accidental HTTP call fail loudly."""

    def get_json(self, url, *, timeout, headers):
        raise GeocoderServiceError("OfflineGeocoder makes no network requests")

    def get_text(self, url, *, timeout, headers):
        raise GeocoderServiceError("OfflineGeocoder makes no network requests")


class OfflineGeocoder(Geocoder):
    """geopy geocoder backed by a Gazetteer (sync only, never touches the network).

    `geocode` takes Chinese address text or an adcode; `reverse` returns the nearest county.
    Each Location's `raw` holds 'adcode', 'name', 'lat' and 'lon'.
    """

    def __init__(self, gazetteer: Gazetteer | None = None, *, max_km: float = 60.0, **kwargs) -> None:
        kwargs.setdefault("adapter_factory", _NoNetworkAdapter)
        super().__init__(**kwargs)
        self.gazetteer = gazetteer if gazetteer is not None else Gazetteer.default()
        self.max_km = max_km

    def _location(self, place: Place | None, exactly_one: bool):
        if place is None:
            return None
        location = Location(
            self.gazetteer.name(place.adcode),
            (place.lat, place.lon),
            {"adcode": place.adcode, "name": place.name, "lat": place.lat, "lon": place.lon},
        )
        return location if exactly_one else [location]

    def geocode(self, query: str, exactly_one: bool = True, timeout=DEFAULT_SENTINEL):
        """Location of an address or adcode, or None when it cannot be resolved."""
        query = str(query).strip()
        place = self.gazetteer.locate(query) if _CODE.fullmatch(query) else self.gazetteer.from_address(query)
        return self._location(place, exactly_one)

    def reverse(self, query, exactly_one: bool = True, timeout=DEFAULT_SENTINEL):
        """Location of the county nearest to (lat, lon) or 'lat, lon', or None if none is near."""
        point = Point(query)
        return self._location(self.gazetteer.nearest(point.latitude, point.longitude, self.max_km), exactly_one)


def _region_code(prefix: str) -> str | None:
    """The 6-digit code of the region a 2-, 4- or 6-digit prefix names: 42 is 420000, 4201 420100."""
    return {2: f"{prefix}0000", 4: f"{prefix}00", 6: prefix}.get(len(prefix))
