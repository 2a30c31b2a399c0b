"""The public crossing times at the gateway: no key asked; computed at most once an interval whatever
the requests; Cache-Control, ETag and Last-Modified, and 304 for a current copy; no plate, pass
number, shipment id, firm or event of the seeded data anywhere in the body; the channel's clock; the
feed documented in the OpenAPI; the page served under the portal's security headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from models.store import firms as rows
from models.store.db import init_db, make_engine, project_batch
from streams.gateway.app import Gateway, create_gateway
from streams.gateway.crossings import PublicCrossings
from tests.support.projections import CP_DG, CP_GZ, CP_SZ, ROUTE_B, decision, status

LAST = datetime(2020, 2, 20, 10, 4, 30, tzinfo=UTC)
FEED = "/public/v1/crossings"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def seeded(n: int) -> tuple[list[dict], list[tuple[str, dict]]]:
    """n passes with plates and ids, each departing the three checkpoints of ROUTE_B with a dwell."""
    decisions = [
        decision(f"GW:SF-WUHAN:ORDER-{k:04d}", f"440305{k:06d}", plate=f"粤B{k:05d}", route=ROUTE_B) for k in range(n)
    ]
    statuses = []
    for k, d in enumerate(decisions):
        pid = d["pass"]["pass_id"]
        for j, cp in enumerate((CP_SZ, CP_DG, CP_GZ)):
            at = (LAST - timedelta(minutes=3 * k + 20 * j)).isoformat()
            statuses.append(
                (
                    f"evt-{pid}-{j}",
                    status(pid, "in_transit", at, checkpoint_id=cp, dwell=240.0 + 60 * k, exceeded=k > 10),
                )
            )
    return decisions, statuses


@pytest.fixture
def public(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/gc.db")
    init_db(engine)
    decisions, statuses = seeded(12)
    with Session(engine) as s:
        project_batch(s, decisions=decisions, statuses=statuses)
        rows.create_firm(
            s,
            firm_id="sf-wuhan",
            name="顺丰武汉",
            credit_code="91420100MA4KX1234X",
            acts_for=[],
            requests_per_minute=60,
            now=LAST,
        )
    app = create_gateway(Gateway(engine=engine, publisher=object()))
    clock = Clock()
    app.state.crossings = PublicCrossings(
        engine,
        clock="channel",
        monotonic=clock,
        now=lambda: datetime(2026, 12, 8, tzinfo=UTC),
        place=lambda a: f"place {a}",
    )
    yield TestClient(app), app.state.crossings, clock, (decisions, statuses), engine
    engine.dispose()


def test_the_feed_needs_no_key_and_says_the_channels_clock(public):
    client, *_ = public
    r = client.get(FEED)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["as_of"] == "2020-02-20T10:04:30Z" and body["clock"] == "channel"
    assert body["min_crossings"] == 5 and body["target_minutes"] == 15
    sz = next(c for c in body["checkpoints"] if c["checkpoint_id"] == CP_SZ)
    assert sz["place"] == "place 440305" and sz["lat"] == 22.54
    assert sz["last_day"]["crossings"] == 12 and sz["last_day"]["median_dwell_minutes"] == 4 + 6
    assert sz["last_hour"]["crossings"] == 12  # 10:04:30 back to 09:31:30, all in the slots 09:10–10:00
    assert sz["last_day"]["share_over_target"] == round(1 / 12, 3)


def test_the_feed_is_cacheable_and_a_current_copy_gets_304(public):
    client, *_ = public
    r = client.get(FEED)
    etag, modified = r.headers["etag"], r.headers["last-modified"]
    assert r.headers["cache-control"] == "public, max-age=60"
    assert parsedate_to_datetime(modified) == datetime(2026, 12, 8, tzinfo=UTC)
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = client.get(FEED, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"", tag
        assert again.headers["etag"] == etag and "max-age" in again.headers["cache-control"]
    assert client.get(FEED, headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(FEED, headers={"If-Modified-Since": modified}).status_code == 304
    earlier = format_datetime(datetime(2026, 12, 7, tzinfo=UTC), usegmt=True)
    assert client.get(FEED, headers={"If-Modified-Since": earlier}).status_code == 200
    assert client.get(FEED, headers={"If-Modified-Since": "not a date"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
    assert client.get(FEED, headers={"If-None-Match": '"other"', "If-Modified-Since": modified}).status_code == 200


def test_the_figures_are_computed_once_an_interval_whatever_the_requests(public):
    client, crossings, clock, _, engine = public
    first = client.get(FEED)
    for _ in range(20):
        assert client.get(FEED).headers["etag"] == first.headers["etag"]
    assert crossings.computations == 1
    more, later = seeded(14)
    with Session(engine) as s:  # two more passes depart: not shown until the interval ends
        project_batch(s, decisions=more[12:], statuses=later[36:])
    clock.t += 30
    r = client.get(FEED)
    assert r.headers["etag"] == first.headers["etag"] and r.headers["cache-control"] == "public, max-age=30"
    clock.t += 30
    r = client.get(FEED)
    assert crossings.computations == 2 and r.headers["etag"] != first.headers["etag"]
    assert next(c for c in r.json()["checkpoints"] if c["checkpoint_id"] == CP_SZ)["last_day"]["crossings"] == 14
    assert client.get(FEED, headers={"If-None-Match": first.headers["etag"]}).status_code == 200


def test_an_unchanged_computation_keeps_its_etag_and_last_modified(public):
    client, crossings, clock, _, _ = public
    first = client.get(FEED)
    crossings.now = lambda: datetime(2026, 12, 9, tzinfo=UTC)
    clock.t += 61
    again = client.get(FEED, headers={"If-None-Match": first.headers["etag"]})
    assert crossings.computations == 2 and again.status_code == 304
    assert again.headers["last-modified"] == first.headers["last-modified"]


def test_no_plate_pass_number_shipment_firm_or_event_in_the_feed(public):
    client, _, _, (decisions, statuses), _ = public
    text = client.get(FEED).text
    body = json.loads(text)
    assert body["checkpoints"]  # something to look in
    personal = {"顺丰武汉", "sf-wuhan", "SF-WUHAN", "91420100MA4KX1234X"}
    for d in decisions:
        p = d["pass"]
        personal |= {
            d["shipment_id"],
            p["pass_id"],
            p["plate"],
            p["plate"][1:],
            p["token"],
            p["issuer"] + p["pass_id"][6:],
        }
    personal |= {event_id for event_id, _ in statuses}
    found = sorted(v for v in personal if v in text or v.lower() in text.lower())
    assert found == [], found
    keys = {k for c in body["checkpoints"] for k in c}
    assert not keys & {"plate", "pass_id", "shipment_id", "firm_id", "issuer", "token"}


def test_the_wall_clock_and_a_wrong_clock(public):
    client, _, _, _, engine = public
    wall = PublicCrossings(engine, clock="wall", now=lambda: datetime(2026, 12, 8, 1, 2, 3, 456, tzinfo=UTC))
    feed = wall.feed()
    assert feed.as_of == "2026-12-08T01:02:03Z" and feed.clock == "wall"
    assert all(c.last_day.withheld == "no_crossings" for c in feed.checkpoints)  # February 2020 is long gone
    with pytest.raises(ValueError, match="wall, channel"):
        PublicCrossings(engine, clock="sundial")


def test_the_feed_is_documented_and_the_page_served_in_chinese_under_the_portals_headers(public):
    client, *_ = public
    spec = client.get("/openapi.json").json()
    op = spec["paths"][FEED]["get"]
    assert op["tags"] == ["public"] and "security" not in op
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/CrossingsFeed")
    fields = spec["components"]["schemas"]["Figures"]["properties"]
    assert {"median_dwell_minutes", "p90_dwell_minutes", "vehicles_per_hour", "share_over_target", "withheld"} <= set(
        fields
    )
    page = client.get("/public/crossings")
    assert page.status_code == 200 and "卡口通行时间" in page.text and 'lang="zh-CN"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/public/crossings.js", "/public/crossings.css"):
        assert client.get(asset).status_code == 200
    assert client.get("/public/crossings.js?name=../../../settings.py").text.startswith("// The public crossing times")


def test_requests_during_a_computation_get_the_last_figures_and_the_first_waits(public):
    import threading

    client, crossings, clock, _, _ = public
    first = client.get(FEED)
    clock.t += 61
    started, finish = threading.Event(), threading.Event()
    slow_feed = crossings.feed

    def slow():
        started.set()
        assert finish.wait(10)
        return slow_feed()

    crossings.feed = slow
    computing = threading.Thread(target=crossings.snapshot)
    computing.start()
    assert started.wait(10)
    during = client.get(FEED)  # while the computation runs: the last figures, said fresh for a second
    assert during.headers["etag"] == first.headers["etag"] and during.headers["cache-control"] == "public, max-age=1"
    finish.set()
    computing.join(10)
    assert crossings.computations == 2


def test_a_database_that_fails_gives_the_last_figures_or_503_never_500(public, tmp_path):
    client, crossings, clock, _, _ = public
    first = client.get(FEED)
    broken = make_engine(f"sqlite:///{tmp_path}/empty.db")  # no tables: every read fails
    crossings.engine = broken
    clock.t += 61
    stale = client.get(FEED)
    assert stale.status_code == 200 and stale.headers["etag"] == first.headers["etag"]
    assert stale.headers["cache-control"] == "public, max-age=5"  # tried again in 5 s
    fresh = PublicCrossings(broken, clock="channel")
    client.app.state.crossings = fresh
    r = client.get(FEED)
    assert r.status_code == 503 and r.json()["error"] == "unavailable" and r.headers["retry-after"] == "10"
    broken.dispose()
