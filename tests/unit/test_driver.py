"""The driver's pass page: its capability link (models.driver) and the gateway's routes for it
(streams.gateway.driver), a pass decided by the real decision core and projected, as test_gateway does."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from models.driver import (
    GREEN,
    GREY,
    SECRET_CHARS,
    driver_path,
    instruction,
    link_secret,
    link_secret_ok,
    new_link_key,
    verdict,
)
from models.store import firms as rows
from models.store.db import get_pass, get_pass_events, init_db, make_engine, recent_waits
from models.store.tables import RecentDwell
from streams.gateway.app import Gateway, create_gateway
from streams.gateway.driver import _NoSecrets, driver_state, driver_url, load_link_key
from streams.gateway.notify import Envelope, Hub
from streams.settings import Settings
from tests.support.factories import REAL_CREDIT_CODES, good_request
from tests.unit.test_gateway import NOW, Channel, auth

ALIBABA, TENCENT, _ = REAL_CREDIT_CODES
KEY = bytes(range(32))
T0 = datetime(2020, 2, 25, 10, 0, tzinfo=UTC)


# --- the formula -----------------------------------------------------------------------------------------


def test_a_links_secret_is_128_bits_of_the_key_and_the_pass_and_nothing_else():
    secret = link_secret(KEY, "420111000001")
    assert len(secret) == SECRET_CHARS == 22 and secret == link_secret(KEY, "420111000001")
    assert secret != link_secret(KEY, "420111000002")
    assert secret != link_secret(new_link_key(), "420111000001")  # a new key: every link ends
    assert driver_path(KEY, "420111000001") == f"/d/420111000001/{secret}"
    assert link_secret_ok(KEY, "420111000001", secret)
    assert not link_secret_ok(KEY, "420111000002", secret)  # one pass's secret opens no other
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    for wrong in ("", flipped, secret[:-1], secret + "A", secret.replace(secret[3], "/"), "é" * 22):
        assert not link_secret_ok(KEY, "420111000001", wrong), wrong
    with pytest.raises(ValueError):
        link_secret(b"short", "420111000001")


def test_the_verdict_is_green_only_for_a_pass_that_lets_the_vehicle_go_on_now():
    until = T0 + timedelta(hours=8)
    for status in ("issued", "at_checkpoint", "in_transit", "rerouted"):
        assert verdict(status, T0, until, T0 + timedelta(hours=1)) == GREEN, status
    for status in ("suspended", "revoked", "expired", "held", "delivered", None):
        assert verdict(status, T0, until, T0 + timedelta(hours=1)) == GREY, status
    assert verdict("issued", T0, until, until) == GREY  # its validity ended, before the worker said so
    assert verdict("issued", T0, until, T0 - timedelta(minutes=1)) == GREY  # not yet valid


def test_what_the_driver_must_do_follows_the_status():
    until, now = T0 + timedelta(hours=8), T0 + timedelta(hours=1)
    assert instruction("in_transit", T0, until, now) == "go"
    assert instruction("rerouted", T0, until, now) == "new_route"
    assert instruction("suspended", T0, until, now) == "stop"
    assert instruction("held", T0, until, now) == "held"
    assert instruction("delivered", T0, until, now) == "done"
    assert instruction("revoked", T0, until, now) == instruction("expired", T0, until, now) == "not_valid"
    assert instruction("in_transit", T0, until, until) == "not_valid"
    assert instruction("issued", T0, until, T0 - timedelta(minutes=1)) == "not_yet"


def test_the_link_key_is_made_once_private_and_read_again(tmp_path):
    path = tmp_path / "keys" / "driver-link.hmac"
    key = load_link_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_link_key(path) == key and list(path.parent.iterdir()) == [path]  # no temporary file left
    settings = Settings(data_dir=tmp_path, _env_file=None)
    assert settings.driver_link_key_path == path
    assert (
        driver_url(settings, "http://gw:8090/", "420111000001") == f"http://gw:8090{driver_path(key, '420111000001')}"
    )


def test_the_access_log_never_holds_a_links_secret():
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/d/420111000001/abcdefghijklmnopqrstuv/state", "1.1", 200), None,
    )  # fmt: skip
    assert _NoSecrets().filter(record)
    assert "abcdefghijklmnopqrstuv" not in record.getMessage() and "/d/420111000001/…/state" in record.getMessage()


# --- the gateway's routes --------------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/gw.db")
    init_db(engine)
    with Session(engine) as s:
        for firm_id, code in (("sf-wuhan", ALIBABA), ("jd-hubei", TENCENT)):
            rows.create_firm(s, firm_id=firm_id, name=firm_id, credit_code=code, acts_for=[], requests_per_minute=600,
                             now=NOW)  # fmt: skip
        keys = {f: rows.create_key(s, firm_id=f, now=NOW).text for f in ("sf-wuhan", "jd-hubei")}
    gw = Gateway(engine=engine, publisher=Channel(engine), now=lambda: NOW, driver_link_key=KEY, clock_of_the_log=True)
    with TestClient(create_gateway(gw), raise_server_exceptions=True) as client:
        r = client.post("/v1/requests", json=good_request(shipment_id="SO-1"), headers=auth(keys["sf-wuhan"]))
        assert r.status_code == 202, r.text
        pass_id = client.get("/v1/requests/SO-1", headers=auth(keys["sf-wuhan"])).json()["decision"]["pass_id"]
        yield client, keys, pass_id, gw


def test_the_firm_gets_its_passs_link_and_its_qr_and_no_other_firm_does(gateway):
    client, keys, pass_id, _ = gateway
    link = client.get(f"/v1/passes/{pass_id}/driver-link", headers=auth(keys["sf-wuhan"]))
    assert link.status_code == 200, link.text
    body = link.json()
    assert body["url"] == f"http://testserver/d/{pass_id}/{link_secret(KEY, pass_id)}"
    png = client.get(body["qr_png_url"], headers=auth(keys["sf-wuhan"]))
    svg = client.get(body["qr_svg_url"], headers=auth(keys["sf-wuhan"]))
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content
    for path in ("", ".png", ".svg"):
        r = client.get(f"/v1/passes/{pass_id}/driver-link{path}", headers=auth(keys["jd-hubei"]))
        assert r.status_code == 404 and r.json()["error"] == "not_found", path
        assert client.get(f"/v1/passes/{pass_id}/driver-link{path}").status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/passes/{pass_id}/driver-link", "/v1/passes/{pass_id}/driver-link.png"} <= set(paths)
    assert not any(p.startswith("/d/") for p in paths)  # the driver's page is no API


def test_the_page_opens_with_its_secret_and_a_wrong_or_missing_one_is_an_unknown_pass(gateway):
    client, _, pass_id, _ = gateway
    secret = link_secret(KEY, pass_id)
    page = client.get(f"/d/{pass_id}/{secret}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        page.headers["referrer-policy"] == "no-referrer"
        and "worker-src 'self'" in page.headers["content-security-policy"]
    )
    assert client.get(f"/d/{pass_id}/{secret}/state").status_code == 200
    unknown = "420111999999"
    refused = [
        client.get(f"/d/{pass_id}/{'A' * 22}"),
        client.get(f"/d/{pass_id}/{'A' * 22}/state"),
        client.get(f"/d/{pass_id}/{'A' * 22}/events"),
        client.get(f"/d/{pass_id}/{link_secret(KEY, unknown)[:-1]}"),
        client.get(f"/d/{pass_id}"),
        client.get(f"/d/{pass_id}/"),
        client.get(f"/d/{unknown}/{link_secret(KEY, unknown)}"),  # its own secret, but no such pass
        client.get(f"/d/{unknown}/{link_secret(KEY, unknown)}/state"),
        client.get(f"/d/{unknown}/{link_secret(KEY, unknown)}/events"),
        client.get(f"/d/{unknown}/{secret}"),  # another pass's secret
    ]
    assert {(r.status_code, r.content) for r in refused} == {(404, refused[0].content)}
    assert client.get("/d/sw.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/driver/driver.js").status_code == 200


def test_the_state_is_what_the_driver_needs_and_the_wait_at_each_checkpoint(gateway):
    client, _, pass_id, gw = gateway
    with Session(gw.engine) as s:
        row = get_pass(s, pass_id=pass_id)
        first = row.route["checkpoints"][0]["checkpoint_id"]
        for i, minutes in enumerate((5, 30, 12)):
            s.add(
                RecentDwell(id=1000 + i, checkpoint_id=first, at=T0 + timedelta(minutes=i), dwell_seconds=minutes * 60)
            )
        s.commit()
        assert recent_waits(s, [first, "BX-0000-0000"])[first]["median_dwell_seconds"] == 12 * 60
    state = client.get(f"/d/{pass_id}/{link_secret(KEY, pass_id)}/state").json()
    # The channel's time is the last event's (the decision at 08:00Z), before its validity (10:00Z).
    assert state["valid_from"] == "2020-02-25T10:00:00Z" and state["as_of"] < state["valid_from"]
    assert state["status"] == "issued" and state["verdict"] == GREY and state["instruction"] == "not_yet"
    assert state["plate"] == "鄂A12345" and state["class_zh"] and state["qr"].startswith("data:image/svg+xml")
    assert state["as_of"] == state["status_at"] and state["served_at"].startswith("2026-12-07")  # the log's clock
    cps = state["route"]["checkpoints"]
    assert cps[0]["median_wait_seconds"] == 720 and cps[0]["recent_departures"] == 3
    assert all(c["median_wait_seconds"] is None for c in cps[1:]) and len(state["route"]["path"]) >= 2
    assert "id_number" not in orjson.dumps(state).decode() and "binding" not in state


def test_a_status_event_ahead_of_the_projection_is_shown_at_once(gateway):
    _, _, pass_id, gw = gateway
    with Session(gw.engine) as s:
        row, events = get_pass(s, pass_id=pass_id), get_pass_events(s, pass_id=pass_id)
    later = row.status_at.replace(tzinfo=UTC) + timedelta(minutes=5)
    new_route = {**row.route, "checkpoints": row.route["checkpoints"][-1:]}
    event = {"status": "rerouted", "at": later.isoformat(), "checkpoint_id": None,
             "reason": "route_crossed_high_risk_region", "route": new_route, "token": row.token}  # fmt: skip
    during = row.valid_from.replace(tzinfo=UTC) + timedelta(hours=1)  # the wall clock then
    state = driver_state(row, events, {}, event=event, now=during, log_time=None)
    assert state["status"] == "rerouted" and state["instruction"] == "new_route" and state["verdict"] == GREEN
    assert state["as_of"] == state["served_at"] == during.isoformat().replace("+00:00", "Z")
    again = driver_state(row, events, {}, event=event, now=during, log_time=None, before=state)
    assert again == state and again["qr"] is state["qr"]  # drawn once for its token
    assert driver_state(row, events, {}, event=event | {"token": "GC1:OTHER"}, now=during, log_time=None,
                        before=state)["qr"] != state["qr"]  # fmt: skip
    past = driver_state(row, events, {}, event=event, now=NOW, log_time=None)  # 2026: past the pass of 2020
    assert (past["verdict"], past["instruction"]) == (GREY, "not_valid")
    assert [c["checkpoint_id"] for c in state["route"]["checkpoints"]] == [new_route["checkpoints"][0]["checkpoint_id"]]
    older = event | {"at": (later - timedelta(hours=1)).isoformat(), "status": "suspended"}
    assert driver_state(row, events, {}, event=older, now=during, log_time=None)["status"] == "issued"  # behind the row
    suspended = event | {"status": "suspended", "reason": "no_safe_route", "route": None}
    state = driver_state(row, events, {}, event=suspended, now=NOW, log_time=later)
    assert (state["status"], state["instruction"], state["reason"]) == ("suspended", "stop", "no_safe_route")


async def test_the_hub_tells_a_passs_stream_its_events_only_and_ends_one_that_falls_behind():
    hub = Hub()
    mine, other = hub.open_pass("420111000001"), hub.open_pass("420111000002")
    event = Envelope("sf-wuhan", "e1", "status", "SO-1", "420111000001", {"status": "rerouted"})
    hub.tell(event)
    assert mine.get_nowait() is event and other.empty()
    for i in range(1000):
        hub.tell(Envelope("sf-wuhan", f"e{i}", "status", "SO-1", "420111000002", {}))
    hub.tell(Envelope("sf-wuhan", "late", "status", "SO-1", "420111000002", {}))  # one too many
    assert "420111000002" not in hub.passes and [other.get_nowait() for _ in range(other.qsize())][-1] is None
    hub.close_pass("420111000001", mine)
    assert hub.passes == {}
