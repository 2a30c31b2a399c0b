"""The region graph: prefecture-level regions of mainland China joined by road-distance edges.

Nodes are keyed by 4-digit prefecture codes:

* A municipality (北京 11, 天津 12, 上海 31, 重庆 50) is one node keyed 'XX01'; its '01'
  districts and '02' counties collapse into it, placed at the municipality's own row.
* A county directly under a province (codes 'XX90xx': 济源, 仙桃, 海南's and 新疆's
  province-direct cities...) joins the nearest prefecture node of its province; those
  counties are scattered (神农架 is 250 km from 仙桃), so one shared 'XX90' node would sit
  where none of them is.
* 台湾 71, 香港 81 and 澳门 82 have only a province row in cpca's table and are not in the
  graph: no prefecture or county to route to, and none is reachable by a mainland road trip.

Edges are a Delaunay triangulation of the node centroids (Albers equal-area projection)
with edges longer than 700 km geodesic dropped, except the shortest ones needed to keep the
graph one connected component. Hainan (46) touches the mainland only through the
海口–湛江 ferry across the Qiongzhou Strait; its other triangulated edges cross open sea.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import networkx as nx
import numpy as np
from geopy.distance import geodesic
from scipy.spatial import Delaunay

from models.records import region_prefix

from .gazetteer import Gazetteer, Place, _normalize

__all__ = ["RegionGraph"]

MUNICIPALITIES = frozenset({"11", "12", "31", "50"})
HAINAN = "46"
FERRIES = (("4408", "4601"),)  # 湛江–海口 (Xuwen–Haikou crossing)


def _albers(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Spherical Albers equal-area conic for China (parallels 25°N/47°N, meridian 105°E)."""
    p1, p2, lon0 = math.radians(25.0), math.radians(47.0), math.radians(105.0)
    n = (math.sin(p1) + math.sin(p2)) / 2.0
    c = math.cos(p1) ** 2 + 2.0 * n * math.sin(p1)
    rho0 = math.sqrt(c) / n
    rho = np.sqrt(c - 2.0 * n * np.sin(np.radians(lat))) / n
    theta = n * (np.radians(lon) - lon0)
    return np.column_stack((rho * np.sin(theta), rho0 - rho * np.cos(theta)))


class RegionGraph:
    """Prefecture-level regions (4-digit keys) with road-distance edges, in a networkx Graph.

    Each node carries 'lat', 'lon', 'province' and 'name'; each edge 'km' (geodesic),
    'weight' (km * road_factor) and 'kind' ('delaunay', 'bridge' kept for connectivity,
    or 'ferry').
    """

    def __init__(self, gazetteer: Gazetteer, *, road_factor: float = 1.3, max_edge_km: float = 700.0) -> None:
        self.gazetteer = gazetteer
        self.road_factor = road_factor
        self.max_edge_km = max_edge_km
        self._regions = self._build_regions(gazetteer)
        self._node_of = self._assign(gazetteer)
        self.graph = self._build_edges()
        if not nx.is_connected(self.graph):
            raise RuntimeError("region graph is not connected")

        index: dict[str, set[str]] = defaultdict(set)
        for code, node in self._node_of.items():
            index[code[:2]].add(node)
            if not code.endswith("0000"):
                index[code[:4]].add(node)
            if not code.endswith("00"):
                index[code].add(node)
        self._index = {prefix: frozenset(nodes) for prefix, nodes in index.items()}

    @classmethod
    @functools.cache
    def default(cls) -> RegionGraph:
        """The shared graph over Gazetteer.default(), built once per process."""
        return cls(Gazetteer.default())

    # -- construction ---------------------------------------------------------------------

    @staticmethod
    def _build_regions(gazetteer: Gazetteer) -> dict[str, Place]:
        with_children = {p.adcode[:2] for p in gazetteer.places() if not p.adcode.endswith("0000")}
        regions: dict[str, Place] = {}
        for place in gazetteer.places():
            code = place.adcode
            if code[:2] not in with_children or code.endswith("0000") or not code.endswith("00"):
                continue
            if code[:2] in MUNICIPALITIES:
                key = code[:2] + "01"
                if key not in regions:
                    city = gazetteer.locate(code[:2] + "0000") or gazetteer.locate(key + "00") or place
                    regions[key] = Place(key + "00", city.name, city.lat, city.lon)
            elif code[2:4] != "90":
                # The gazetteer already places a coordinate-less prefecture at its counties' mean.
                regions[code[:4]] = Place(code, place.name, place.lat, place.lon)
        return dict(sorted(regions.items()))

    def _nearest_in_province(self, place: Place) -> str | None:
        candidates = [r for r in self._regions.values() if r.province == place.province]
        if not candidates:
            return None
        best = min(candidates, key=lambda r: (geodesic((place.lat, place.lon), (r.lat, r.lon)).km, r.adcode))
        return best.prefecture

    def _assign(self, gazetteer: Gazetteer) -> dict[str, str]:
        node_of: dict[str, str] = {}
        for place in gazetteer.places():
            code = place.adcode
            if code[:2] in MUNICIPALITIES and not code.endswith("0000"):
                node_of[code] = code[:2] + "01"
            elif code[:4] in self._regions and not code.endswith("0000"):
                node_of[code] = code[:4]
            else:
                # Province rows, province-direct counties and their coordinate-only groups.
                node = self._nearest_in_province(place)
                if node is not None:
                    node_of[code] = node
        return node_of

    def _build_edges(self) -> nx.Graph:
        keys = list(self._regions)
        lat = np.array([self._regions[k].lat for k in keys])
        lon = np.array([self._regions[k].lon for k in keys])
        pairs: set[tuple[int, int]] = set()
        for simplex in Delaunay(_albers(lat, lon)).simplices:
            u, v, w = sorted(int(i) for i in simplex)
            pairs.update(((u, v), (u, w), (v, w)))

        candidates: list[tuple[float, str, str, str]] = []
        for i, j in sorted(pairs):
            a, b = keys[i], keys[j]
            # Triangulated edges between Hainan and the mainland cross open sea; the ferry replaces them.
            if (a[:2] == HAINAN) != (b[:2] == HAINAN):
                continue
            candidates.append((self._km(a, b), a, b, "delaunay"))
        for a, b in FERRIES:
            if a in self._regions and b in self._regions:
                candidates.append((self._km(a, b), a, b, "ferry"))

        graph = nx.Graph()
        for key in keys:
            r = self._regions[key]
            graph.add_node(key, lat=r.lat, lon=r.lon, province=r.province, name=r.name)

        parent = {k: k for k in keys}

        def find(k: str) -> str:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        def add(km: float, a: str, b: str, kind: str) -> None:
            graph.add_edge(a, b, km=km, weight=km * self.road_factor, kind=kind)
            parent[find(a)] = find(b)

        dropped: list[tuple[float, str, str]] = []
        for km, a, b, kind in candidates:
            if km <= self.max_edge_km or kind == "ferry":
                add(km, a, b, kind)
            else:
                dropped.append((km, a, b))
        # Kruskal over the dropped edges: only the shortest ones that join components come back.
        for km, a, b in sorted(dropped):
            if find(a) != find(b):
                add(km, a, b, "bridge")
        return graph

    def _km(self, a: str, b: str) -> float:
        ra, rb = self._regions[a], self._regions[b]
        return geodesic((ra.lat, ra.lon), (rb.lat, rb.lon)).km

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._regions)

    def __contains__(self, key: object) -> bool:
        return key in self._regions

    def region(self, key: str) -> Place:
        """A node as a Place: adcode key + '00', node name, centroid."""
        return self._regions[key]

    def node_of(self, adcode: str) -> str:
        """The node key holding a 6- or 12-digit adcode; KeyError when it is outside the graph."""
        node = self._node_of.get(adcode)  # a 6-digit code of the table: the common case, no parsing
        if node is not None:
            return node
        code = _normalize(adcode)
        if code is not None:
            node = self._node_of.get(code)
            if node is not None:
                return node
            # A well-formed code missing from the table still belongs to its prefecture.
            if not code.endswith("0000"):
                key = code[:2] + "01" if code[:2] in MUNICIPALITIES else code[:4]
                if key in self._regions:
                    return key
        raise KeyError(adcode)

    def prefectures_in(self, prefix: str) -> frozenset[str]:
        """Node keys covering a 2-, 4- or 6-digit adcode prefix (empty when none)."""
        prefix = prefix.strip() if isinstance(prefix, str) else ""
        if len(prefix) == 12:
            prefix = prefix[:6]
        return self._index.get(region_prefix(prefix), frozenset())

    def is_border(self, a: str, b: str) -> bool:
        """Whether going from node a to node b crosses a provincial border."""
        return a[:2] != b[:2]
