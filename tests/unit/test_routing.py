"""Gazetteer, geocoder, region graph and route planner (offline, no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import networkx as nx
import orjson
import pytest
from geopy.distance import geodesic
from geopy.location import Location

from routing import Checkpoint, Gazetteer, OfflineGeocoder, Place, RegionGraph, Route, RoutePlanner

DEPARTURE = datetime(2020, 2, 20, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.default()


@pytest.fixture(scope="module")
def graph() -> RegionGraph:
    return RegionGraph.default()


@pytest.fixture
def planner(graph) -> RoutePlanner:
    return RoutePlanner(graph)


@pytest.fixture(scope="module")
def wuhan(gazetteer) -> Place:
    return gazetteer.locate("420111")


@pytest.fixture(scope="module")
def tianhe(gazetteer) -> Place:
    return gazetteer.locate("440106")


# --- gazetteer -------------------------------------------------------------------------------


def test_public_surface():
    import routing

    assert sorted(routing.__all__) == sorted(
        ["Place", "Gazetteer", "OfflineGeocoder", "RegionGraph", "Checkpoint", "Route", "RoutePlanner"]
    )


def test_locate_accepts_6_and_12_digits(gazetteer):
    place = gazetteer.locate("420111")
    assert place == gazetteer.locate("420111000000")
    assert place.name == "洪山区" and place.province == "42" and place.prefecture == "4201" and place.is_county
    assert 30 < place.lat < 31 and 114 < place.lon < 115
    assert gazetteer.locate("420100").is_county is False
    assert gazetteer.locate("999999") is None
    assert gazetteer.locate("4201") is None
    assert gazetteer.locate("520301") is None  # a '市辖区' row without coordinates or children


def test_locate_falls_back_to_children_mean(gazetteer):
    # 湖北省直辖县级行政区划 has no coordinates of its own.
    group = gazetteer.locate("429000")
    children = [p for p in gazetteer.counties() if p.adcode.startswith("4290")]
    assert children
    assert group.lat == pytest.approx(sum(p.lat for p in children) / len(children))
    assert group.lon == pytest.approx(sum(p.lon for p in children) / len(children))


def test_full_names(gazetteer):
    assert gazetteer.name("420111") == "湖北省武汉市洪山区"
    assert gazetteer.name("110101") == "北京市东城区"
    assert gazetteer.name("429004") == "湖北省仙桃市"
    assert gazetteer.name("420000") == "湖北省"
    with pytest.raises(KeyError):
        gazetteer.name("999999")


def test_from_address(gazetteer):
    assert gazetteer.from_address("湖北省武汉市洪山区珞喻路1037号").adcode == "420111"
    shanghai = gazetteer.from_address("上海市徐汇区漕溪北路88号")
    assert shanghai.adcode.startswith("3101") and shanghai.is_county
    assert gazetteer.from_address("广东省").adcode == "440000"
    assert gazetteer.from_address("") is None
    assert gazetteer.from_address("no address here") is None


def test_nearest(gazetteer):
    place = gazetteer.nearest(30.5, 114.3)
    assert place.prefecture == "4201" and place.is_county
    assert gazetteer.nearest(0.0, 0.0) is None
    assert gazetteer.nearest(91.0, 114.3) is None
    assert gazetteer.nearest(30.5, 181.0) is None
    assert gazetteer.nearest(float("nan"), 114.3) is None


def test_counties_have_coordinates(gazetteer):
    counties = list(gazetteer.counties())
    assert len(counties) > 2500
    assert all(c.is_county and len(c.adcode) == 6 for c in counties)


def test_offline_geocoder(gazetteer):
    geocoder = OfflineGeocoder(gazetteer)
    found = geocoder.geocode("湖北省武汉市洪山区珞喻路1037号")
    assert isinstance(found, Location)
    assert found.raw["adcode"] == "420111" and found.address == "湖北省武汉市洪山区"
    assert (found.latitude, found.longitude) == pytest.approx((30.500247, 114.343796))
    by_code = geocoder.geocode("440106", exactly_one=False)
    assert [loc.raw["adcode"] for loc in by_code] == ["440106"]
    assert geocoder.geocode("not a place") is None

    back = geocoder.reverse((30.5, 114.3))
    assert back.raw["adcode"].startswith("4201")
    assert geocoder.reverse("30.5, 114.3").raw == back.raw
    assert geocoder.reverse((0.0, 0.0)) is None


# --- region graph ----------------------------------------------------------------------------


def test_graph_is_connected_and_covers_every_county(gazetteer, graph):
    g = graph.graph
    assert nx.is_connected(g)
    assert 300 < g.number_of_nodes() < 400
    for county in gazetteer.counties():
        assert graph.node_of(county.adcode) in g
    assert all(len(key) == 4 for key in g)


def test_graph_special_regions(graph):
    # Municipalities collapse into one node, province-direct counties join a prefecture.
    assert graph.node_of("110105") == "1101"
    assert graph.node_of("500243") == "5001"  # a Chongqing '02' county
    assert graph.node_of("420111000000") == "4201"
    assert graph.node_of("429004")[:2] == "42" and graph.node_of("429004") in graph.graph
    assert graph.node_of("420000") == "4201"
    with pytest.raises(KeyError):
        graph.node_of("810000")
    for excluded in ("71", "81", "82"):
        assert graph.prefectures_in(excluded) == frozenset()
    # Hainan reaches the mainland by the Qiongzhou ferry only.
    mainland_links = {(a, b) for a, b in graph.graph.edges if (a[:2] == "46") != (b[:2] == "46")}
    assert {frozenset(e) for e in mainland_links} == {frozenset({"4408", "4601"})}


def test_graph_edges(graph):
    for _a, _b, data in graph.graph.edges(data=True):
        assert data["weight"] == pytest.approx(data["km"] * graph.road_factor)
        assert data["km"] <= graph.max_edge_km or data["kind"] != "delaunay"


def test_prefectures_in(graph):
    assert graph.prefectures_in("4201") == frozenset({"4201"})
    assert graph.prefectures_in("420111") == frozenset({"4201"})
    assert graph.prefectures_in("420100") == frozenset({"4201"})
    hubei = graph.prefectures_in("42")
    assert "4201" in hubei and all(k.startswith("42") for k in hubei)
    assert graph.prefectures_in("420000") == hubei
    assert graph.prefectures_in("11") == frozenset({"1101"})
    assert graph.prefectures_in("5002") == frozenset({"5001"})
    assert graph.prefectures_in("4290") <= hubei and graph.prefectures_in("4290")
    assert graph.prefectures_in("99") == frozenset()


def test_is_border(graph):
    assert graph.is_border("4212", "4306")
    assert not graph.is_border("4201", "4212")


# --- planner ---------------------------------------------------------------------------------


def test_wuhan_to_guangzhou(planner, wuhan, tianhe):
    route = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE)
    assert isinstance(route, Route)
    assert route.adcodes[0] == "420111" and route.adcodes[-1] == "440106"
    assert route.nodes[0] == "4201" and route.nodes[-1] == "4401"
    assert any(n.startswith("43") for n in route.nodes)

    straight = geodesic((wuhan.lat, wuhan.lon), (tianhe.lat, tianhe.lon)).km
    assert straight == pytest.approx(840, abs=30)
    assert 1.0 * straight <= route.distance_km <= 1.6 * straight

    # One checkpoint per provincial border crossed, in path order, then the destination.
    crossings = [(a, b) for a, b in zip(route.nodes, route.nodes[1:]) if a[:2] != b[:2]]
    borders = route.checkpoints[:-1]
    assert [c.checkpoint_id for c in borders] == [f"BX-{min(a, b)}-{max(a, b)}" for a, b in crossings]
    assert [c.adcode for c in borders] == [b + "00" for _, b in crossings]
    assert borders[0].name.startswith("湖北—") and borders[-1].name.startswith("湖南—广东 border (")
    final = route.checkpoints[-1]
    assert final.checkpoint_id == "DST-440106" and final.adcode == "440106"
    assert (final.lat, final.lon) == (tianhe.lat, tianhe.lon)

    etas = [DEPARTURE] + [c.eta for c in route.checkpoints]
    assert all(a < b for a, b in zip(etas, etas[1:]))
    assert route.eta == final.eta
    assert route.eta - DEPARTURE == pytest.approx(timedelta(hours=route.distance_km / 60), abs=timedelta(seconds=5))


def test_to_dict_is_json_ready(planner, wuhan, tianhe):
    route = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE)
    data = orjson.loads(orjson.dumps(route.to_dict()))
    assert data["adcodes"] == list(route.adcodes)
    assert data["distance_km"] == route.distance_km
    assert data["eta"].endswith("Z") and data["eta"] == data["checkpoints"][-1]["eta"]
    first = data["checkpoints"][0]
    assert set(first) == {"checkpoint_id", "name", "adcode", "lat", "lon", "eta"}
    assert first["lat"] == round(route.checkpoints[0].lat, 6)
    assert datetime.fromisoformat(first["eta"]) == route.checkpoints[0].eta


def test_blocking_an_intermediate_node_reroutes(planner, wuhan, tianhe):
    base = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE)
    middle = base.nodes[len(base.nodes) // 2]
    detour = planner.plan(wuhan, tianhe, blocked=frozenset({middle}), departure=DEPARTURE)
    assert detour is not None and detour.nodes != base.nodes
    assert middle not in detour.nodes and not detour.touches(frozenset({middle}))
    assert base.touches(frozenset({middle}))
    assert detour.distance_km >= base.distance_km


def test_enclosed_origin_has_no_route(planner, graph, wuhan, tianhe):
    neighbours = frozenset(graph.graph.neighbors("4201"))
    assert planner.plan(wuhan, tianhe, blocked=neighbours, departure=DEPARTURE) is None
    # The same answer again comes from the cache.
    hits = planner.stats.hits
    assert planner.plan(wuhan, tianhe, blocked=neighbours | {"6501"}, departure=DEPARTURE) is None
    assert planner.stats.hits == hits + 1


def test_end_nodes_are_never_blocked(planner, wuhan, tianhe):
    base = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE)
    ends = planner.plan(wuhan, tianhe, blocked=frozenset({"4201", "4401"}), departure=DEPARTURE)
    assert ends == base


def test_same_node_trip(planner, gazetteer, wuhan):
    jiangan = gazetteer.locate("420102")
    route = planner.plan(wuhan, jiangan, blocked=frozenset({"4201"}), departure=DEPARTURE)
    assert route.nodes == ("4201",) and route.adcodes == ("420111", "420102")
    assert [c.checkpoint_id for c in route.checkpoints] == ["DST-420102"]
    leg = geodesic((wuhan.lat, wuhan.lon), (jiangan.lat, jiangan.lon)).km * planner.graph.road_factor
    assert route.distance_km == pytest.approx(leg, abs=0.05)


def test_hainan_goes_by_ferry(planner, gazetteer):
    route = planner.plan(
        gazetteer.locate("460105"), gazetteer.locate("110101"), blocked=frozenset(), departure=DEPARTURE
    )
    assert route.nodes[:2] == ("4601", "4408")
    assert route.checkpoints[0].checkpoint_id == "BX-4408-4601"


def test_cache_reuse_and_invalidation(planner, wuhan, tianhe):
    first = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE)
    assert (planner.stats.hits, planner.stats.misses) == (0, 1)

    assert planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE) == first
    assert planner.stats.hits == 1

    elsewhere = frozenset({"6501"})  # Urumqi, nowhere near the route
    assert planner.plan(wuhan, tianhe, blocked=elsewhere, departure=DEPARTURE) == first
    assert (planner.stats.hits, planner.stats.misses) == (2, 1)

    on_path = frozenset({first.nodes[len(first.nodes) // 2]})
    detour = planner.plan(wuhan, tianhe, blocked=on_path, departure=DEPARTURE)
    assert (planner.stats.hits, planner.stats.misses) == (2, 2)
    assert not detour.touches(on_path)

    # A superset of the blocked set that the detour still avoids reuses the detour.
    assert planner.plan(wuhan, tianhe, blocked=on_path | elsewhere, departure=DEPARTURE) == detour
    assert planner.stats.hits == 3

    # Lifting the block brings back the unconstrained path.
    assert planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE) == first

    # A different block on the detour forces a recomputation.
    other = frozenset({n for n in detour.nodes[1:-1] if n not in first.nodes}) or frozenset({detour.nodes[1]})
    misses = planner.stats.misses
    again = planner.plan(wuhan, tianhe, blocked=on_path | other, departure=DEPARTURE)
    assert planner.stats.misses == misses + 1
    assert again is None or not again.touches(on_path | other)

    planner.clear()
    assert (planner.stats.hits, planner.stats.misses, planner.stats.size) == (0, 0, 0)


def test_etas_follow_departure(planner, wuhan, tianhe):
    early = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE)
    later = planner.plan(wuhan, tianhe, blocked=frozenset(), departure=DEPARTURE + timedelta(hours=3))
    assert planner.stats.hits == 1
    assert [c.eta - early_c.eta for c, early_c in zip(later.checkpoints, early.checkpoints)] == [
        timedelta(hours=3)
    ] * len(early.checkpoints)
    assert isinstance(later.checkpoints[0], Checkpoint)


def test_deterministic(graph, gazetteer):
    pairs = [("420111", "440106"), ("654324", "230102"), ("460105", "110101"), ("540102", "310115")]
    blocked = frozenset({"4306", "4301", "3601"})
    for origin, destination in pairs:
        o, d = gazetteer.locate(origin), gazetteer.locate(destination)
        a = RoutePlanner(graph).plan(o, d, blocked=blocked, departure=DEPARTURE)
        b = RoutePlanner(graph).plan(o, d, blocked=blocked, departure=DEPARTURE)
        assert a == b and a is not None
    rebuilt = RegionGraph(gazetteer)
    assert sorted(rebuilt.graph.edges) == sorted(graph.graph.edges)
    o, d = gazetteer.locate("420111"), gazetteer.locate("440106")
    assert RoutePlanner(rebuilt).plan(o, d, departure=DEPARTURE) == RoutePlanner(graph).plan(o, d, departure=DEPARTURE)
