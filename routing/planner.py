"""Route planning over the region graph around blocked (high-risk) regions.

Holds `Checkpoint` (a provincial border crossing or the destination, with an ETA), `Route`
(one planned trip) and `RoutePlanner` (Dijkstra plus a lazily invalidated route cache).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from geographiclib.geodesic import Geodesic

from .gazetteer import EARTH_RADIUS_KM, Place
from .graph import RegionGraph

__all__ = ["Checkpoint", "Route", "RoutePlanner"]

# Autonomous regions drop their ethnic designation in the short form; others just the suffix.
_SHORT_PROVINCE = {
    "内蒙古自治区": "内蒙古",
    "广西壮族自治区": "广西",
    "西藏自治区": "西藏",
    "宁夏回族自治区": "宁夏",
    "新疆维吾尔自治区": "新疆",
}
_WGS84 = Geodesic.WGS84


def _rfc3339(value: datetime) -> str:
    # A naive datetime is taken to be UTC, the project's wire time zone.
    # isoformat is several times faster than strftime; a route has a time per checkpoint.
    if value.tzinfo is not None and value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat() + "Z"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A point a pass is checked at: 'BX-a-b' border crossings and the final 'DST-adcode'."""

    checkpoint_id: str
    name: str
    adcode: str
    lat: float
    lon: float
    eta: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_id": self.checkpoint_id,
            "name": self.name,
            "adcode": self.adcode,
            "lat": round(self.lat, 6),
            "lon": round(self.lon, 6),
            "eta": _rfc3339(self.eta),
        }


@dataclass(frozen=True, slots=True)
class Route:
    """A planned trip: adcodes passed, checkpoints with ETAs, road distance and node keys."""

    adcodes: tuple[str, ...]
    checkpoints: tuple[Checkpoint, ...]
    distance_km: float
    eta: datetime
    nodes: tuple[str, ...]

    def touches(self, node_keys: Set[str]) -> bool:
        """Whether the route enters any of the given node keys (its end nodes included)."""
        return not node_keys.isdisjoint(self.nodes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; times as RFC 3339 UTC strings."""
        return {
            "adcodes": list(self.adcodes),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "distance_km": self.distance_km,
            "eta": _rfc3339(self.eta),
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    """A route between two places minus everything that depends on the departure time."""

    nodes: tuple[str, ...]
    interior: frozenset[str]
    adcodes: tuple[str, ...]
    distance_km: float
    # (checkpoint_id, name, adcode, lat, lon, offset from departure)
    stops: tuple[tuple[str, str, str, float, float, timedelta], ...]

    def route(self, departure: datetime) -> Route:
        checkpoints = tuple(Checkpoint(i, n, a, la, lo, departure + off) for i, n, a, la, lo, off in self.stops)
        return Route(self.adcodes, checkpoints, self.distance_km, checkpoints[-1].eta, self.nodes)


@dataclass(slots=True)
class _Entry:
    unconstrained: _Plan
    constrained: _Plan | None = None  # None with a `blocked` set: no path exists under it
    blocked: frozenset[str] | None = None  # what `constrained` was computed under, end nodes removed


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Route-cache counters: a hit is a plan() answered without a path search."""

    hits: int
    misses: int
    size: int


class RoutePlanner:
    """Shortest routes between places that avoid blocked nodes, cached per place pair.

    A cached entry keeps the unconstrained shortest path and the last path computed under
    some blocked set B0. Under a new blocked set B it is reused when the unconstrained path
    avoids B, or when the constrained path avoids B and B contains B0 (removing options
    cannot make a still-feasible optimum worse). So a risk change only costs a
    recomputation for the pairs whose routes it actually touches, and only when asked.
    """

    def __init__(self, graph: RegionGraph, speed_kmh: float = 60.0, *, cache_size: int = 100_000) -> None:
        if speed_kmh <= 0:
            raise ValueError("speed_kmh must be positive")
        self.graph = graph
        self.speed_kmh = speed_kmh
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[Place, Place], _Entry] = OrderedDict()
        self._hits = 0
        self._misses = 0

        nx_graph = graph.graph
        # Plain tuples sorted by key: faster than networkx views, and the fixed neighbour
        # order plus (cost, key) heap entries make equal-cost ties resolve the same way always.
        self._adj = {u: tuple(sorted((v, d["weight"]) for v, d in nx_graph[u].items())) for u in sorted(nx_graph)}
        self._vec: dict[str, tuple[float, float, float]] = {}
        for u in nx_graph:
            lat, lon = math.radians(nx_graph.nodes[u]["lat"]), math.radians(nx_graph.nodes[u]["lon"])
            self._vec[u] = (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))
        # Great-circle distance on a sphere is within 0.6% of the WGS-84 geodesic, so this
        # scale keeps the A* estimate below every real remaining cost (admissible, consistent).
        self._h_scale = 0.99 * EARTH_RADIUS_KM * graph.road_factor
        self._short: dict[str, str] = {}
        for province in {u[:2] for u in nx_graph}:
            full = graph.gazetteer.name(province + "0000")
            self._short[province] = _SHORT_PROVINCE.get(full, full.removesuffix("省").removesuffix("市"))

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, len(self._cache))

    def clear(self) -> None:
        """Forget every cached route and reset the counters."""
        self._cache.clear()
        self._hits = self._misses = 0

    def plan(
        self, origin: Place, destination: Place, *, blocked: frozenset[str] = frozenset(), departure: datetime
    ) -> Route | None:
        """The shortest route avoiding `blocked` node keys (the end nodes are always allowed).

        None when every route is blocked or a place lies outside the graph. Routes are cached
        per (origin, destination) place pair, i.e. per adcode pair for gazetteer places.
        Checkpoint ETAs keep `departure`'s time zone (naive stays naive, read as UTC by to_dict).
        """
        key = (origin, destination)
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            if entry.unconstrained.interior.isdisjoint(blocked):
                self._hits += 1
                return entry.unconstrained.route(departure)
            used = entry.blocked
            if used is not None and used <= blocked:
                plan = entry.constrained
                if plan is None:
                    self._hits += 1
                    return None
                if plan.interior.isdisjoint(blocked):
                    self._hits += 1
                    return plan.route(departure)

        self._misses += 1
        if entry is None:
            try:
                start, end = self.graph.node_of(origin.adcode), self.graph.node_of(destination.adcode)
            except KeyError:
                return None
            path = self._path(start, end, frozenset())
            if path is None:  # the graph is connected (RegionGraph bridges its components): never
                return None
            entry = _Entry(self._plan(origin, destination, path))
            self._cache[key] = entry
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            if entry.unconstrained.interior.isdisjoint(blocked):
                return entry.unconstrained.route(departure)

        nodes = entry.unconstrained.nodes
        start, end = nodes[0], nodes[-1]
        avoid = frozenset(blocked).difference((start, end))
        path = self._path(start, end, avoid)
        entry.constrained = None if path is None else self._plan(origin, destination, path)
        entry.blocked = avoid
        return None if entry.constrained is None else entry.constrained.route(departure)

    def _path(self, start: str, end: str, avoid: frozenset[str]) -> list[str] | None:
        """Dijkstra with an A* great-circle lower bound; None when `avoid` cuts start from end."""
        if start == end:
            return [start]
        adj, vec, scale = self._adj, self._vec, self._h_scale
        tx, ty, tz = vec[end]

        def estimate(node: str) -> float:
            x, y, z = vec[node]
            chord = math.sqrt((x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2)
            return scale * 2.0 * math.asin(min(1.0, chord / 2.0))

        cost = {start: 0.0}
        previous: dict[str, str] = {}
        done: set[str] = set()
        heap = [(estimate(start), start)]
        while heap:
            _, u = heapq.heappop(heap)
            if u == end:
                path = [end]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return path[::-1]
            if u in done:
                continue
            done.add(u)
            base = cost[u]
            for v, w in adj[u]:
                if v in done or v in avoid:
                    continue
                c = base + w
                if c < cost.get(v, math.inf):
                    cost[v] = c
                    previous[v] = u
                    heapq.heappush(heap, (c + estimate(v), v))
        return None

    def _plan(self, origin: Place, destination: Place, path: list[str]) -> _Plan:
        graph = self.graph
        factor = graph.road_factor
        regions = [graph.region(k) for k in path]
        # The trip starts and ends at the counties, not at their nodes' centroids.
        points = (
            [(origin.lat, origin.lon)] + [(r.lat, r.lon) for r in regions[1:-1]] + [(destination.lat, destination.lon)]
        )
        legs = []
        for i in range(len(points) - 1):
            if 0 < i < len(points) - 2:
                legs.append(graph.graph[path[i]][path[i + 1]]["weight"])
            else:
                (lat1, lon1), (lat2, lon2) = points[i], points[i + 1]
                # geopy's geodesic is this same WGS-84 computation behind a slower wrapper.
                legs.append(_WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)["s12"] / 1000.0 * factor)

        def offset(km: float) -> timedelta:
            return timedelta(seconds=round(km / self.speed_kmh * 3600.0))

        stops = []
        travelled = 0.0
        for i, leg in enumerate(legs):
            if i < len(path) - 1 and graph.is_border(path[i], path[i + 1]):
                a, b = regions[i], regions[i + 1]
                low, high = sorted((path[i], path[i + 1]))
                stops.append(
                    (
                        f"BX-{low}-{high}",
                        f"{self._short[a.province]}—{self._short[b.province]} border ({a.name}→{b.name})",
                        b.adcode,
                        (a.lat + b.lat) / 2.0,
                        (a.lon + b.lon) / 2.0,
                        offset(travelled + leg / 2.0),
                    )
                )
            travelled += leg
        stops.append(
            (
                f"DST-{destination.adcode}",
                graph.gazetteer.name(destination.adcode)
                if graph.gazetteer.locate(destination.adcode)
                else destination.name,
                destination.adcode,
                destination.lat,
                destination.lon,
                offset(travelled),
            )
        )

        adcodes = [origin.adcode] + [r.adcode for r in regions[1:-1]] + [destination.adcode]
        adcodes = [c for i, c in enumerate(adcodes) if i == 0 or c != adcodes[i - 1]]
        return _Plan(tuple(path), frozenset(path[1:-1]), tuple(adcodes), round(travelled, 1), tuple(stops))
