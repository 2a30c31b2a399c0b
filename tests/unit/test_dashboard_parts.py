"""The dashboard's parts without a broker: its map regions against the gazetteer's, and its web app's
access rules (in a real browser, against the running system: tests/integration/test_dashboard.py)."""

from __future__ import annotations

from models.mapregions import MAP_ALIASES, gazetteer_code
from models.records import parse_time
from models.reference import RiskBook
from routing import Gazetteer
from streams.dashboard import map_features

WUHAN = "420100"


def test_every_map_region_shows_a_region_of_the_gazetteer():
    gazetteer = Gazetteer.default()
    features = map_features()
    assert len(features) > 360
    unknown = {f for f in features if not gazetteer.names_region(gazetteer_code(f))}
    assert unknown == {"659005", "659007"}  # 北屯, 双河: newer than the table; their province's level shows
    assert all(gazetteer.names_region(code) for code in MAP_ALIASES.values())


def test_a_prefecture_level_colours_its_map_region_and_no_other():
    from models.mapregions import feature_levels
    from models.records import RegionRisk

    book, at = RiskBook(), parse_time("2020-02-25T00:00:00Z")
    book.apply(RegionRisk("4201", "high", at))
    book.apply(RegionRisk("11", "medium", at))
    levels = feature_levels(book, map_features(), at)
    assert levels[WUHAN] == 2 and levels["110000"] == 1 and levels["420200"] == 0
    assert sorted(f for f, n in levels.items() if n) == ["110000", WUHAN]


async def test_the_dashboard_wants_its_token_answers_only_its_hosts_and_sends_the_security_headers(tmp_path):
    from aiohttp import ClientSession

    from streams.dashboard import Dashboard, make_app
    from streams.settings import Settings
    from streams.web import Access, start_site, stop_site
    from tests.unit.test_web import assert_secure_headers

    board = Dashboard(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/gc.db"))
    runner = await start_site(make_app(board, Access.for_site("127.0.0.1", "s3cret")), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    bearer = {"Authorization": "Bearer s3cret"}
    try:
        async with ClientSession() as http:
            for path in ("", "state", "search?q=x", "static/dashboard.js"):
                refused = await http.get(url + path)
                assert refused.status == 401, path
                assert_secure_headers(refused)
                rebound = await http.get(url + path, headers={**bearer, "Host": "rebind.attacker.example"})
                assert rebound.status == 400, path
            for path in ("", "state", "static/dashboard.js"):
                answer = await http.get(url + path, headers=bearer)
                assert answer.status == 200, path
                assert_secure_headers(answer)
            page = await (await http.get(url, headers=bearer)).text()
            assert "<script>" not in page and "style=" not in page  # no inline script or style in the page
            forged = await http.post(
                url + "state", data="a=1", headers={**bearer, "Content-Type": "application/x-www-form-urlencoded"}
            )
            assert forged.status == 415
    finally:
        await stop_site(runner, board.hub)
        board.engine.dispose()
