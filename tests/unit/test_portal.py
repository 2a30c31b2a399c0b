"""The firms' portal at the gateway: a key traded for a session cookie, the cookie refused for changes
another page could drive (CSRF), a revoked key ending its sessions, and the form's look-ups."""

from __future__ import annotations

from sqlmodel import Session

from models.firms import parse_api_key
from models.store import firms as rows
from streams.gateway.app import FAILURES_BURST
from streams.gateway.session import COOKIE, MAX_PER_KEY, Sessions, csrf_refusal
from tests.support.factories import good_request
from tests.unit.test_gateway import NOW, gateway  # noqa: F401 — the fixture, shared

PORTAL = {"X-GC-Portal": "1"}


def sign_in(client, key: str):
    return client.post("/v1/session", json={"key": key}, headers=PORTAL)


def test_a_key_opens_a_session_cookie_the_page_cannot_read(gateway):  # noqa: F811
    client, keys, _, _ = gateway
    r = sign_in(client, keys["sf-wuhan"])
    assert r.status_code == 200, r.text
    assert r.json()["firm_id"] == "sf-wuhan" and r.json()["name"] == "顺丰武汉"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert keys["sf-wuhan"] not in cookie and parse_api_key(keys["sf-wuhan"]).key_id not in cookie
    assert client.get("/v1/session").json()["firm_id"] == "sf-wuhan"
    assert client.get("/v1/requests").status_code == 200


def test_the_session_applies_from_the_portal_only(gateway):  # noqa: F811
    client, keys, channel, _ = gateway
    sign_in(client, keys["sf-wuhan"])
    body = good_request(shipment_id="WEB-1")
    for headers in ({}, {"Origin": "http://evil.example"}, PORTAL | {"Origin": "http://testserver:8081"}):
        r = client.post("/v1/requests", json=body, headers=headers)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (headers, r.text)
    r = client.post("/v1/requests", json=body, headers=PORTAL | {"Sec-Fetch-Site": "same-site"})
    assert r.status_code == 403
    assert channel.published == []
    r = client.post("/v1/requests", json=body, headers=PORTAL | {"Origin": "http://testserver"})
    assert r.status_code == 202, r.text
    assert channel.published[0][1]["requested_by"] == "sf-wuhan"
    view = client.get("/v1/requests/WEB-1").json()
    assert view["status"] == "approved" and view["pass_status"] == "issued"


def test_a_bearer_key_needs_no_portal_header(gateway):  # noqa: F811
    client, keys, channel, _ = gateway
    headers = {"Authorization": f"Bearer {keys['sf-wuhan']}", "Origin": "http://elsewhere.example"}
    r = client.post("/v1/requests", json=good_request(shipment_id="API-1"), headers=headers)
    assert r.status_code == 202, r.text  # a program with the key is no page driving a browser
    assert len(channel.published) == 1


def test_revoking_the_key_ends_its_sessions_and_signing_out_ends_one(gateway):  # noqa: F811
    client, keys, _, gw = gateway
    sign_in(client, keys["sf-wuhan"])
    assert client.get("/v1/requests").status_code == 200
    with Session(gw.engine) as s:
        rows.revoke_key(s, key_id=parse_api_key(keys["sf-wuhan"]).key_id, now=NOW)
    assert client.get("/v1/requests").status_code == 401
    sign_in(client, keys["jd-hubei"])
    sid = client.cookies.get(COOKIE)
    assert client.get("/v1/session").json()["firm_id"] == "jd-hubei"
    assert client.delete("/v1/session", headers=PORTAL).status_code == 204
    client.cookies.set(COOKIE, sid)  # the old cookie, kept by someone: dead too
    assert client.get("/v1/requests").status_code == 401


def test_a_wrong_key_or_a_foreign_page_opens_no_session(gateway):  # noqa: F811
    client, keys, _, _ = gateway
    assert sign_in(client, "gck_000000000000_" + "A" * 43).status_code == 401
    r = client.post("/v1/session", json={"key": keys["sf-wuhan"]}, headers=PORTAL | {"Origin": "http://evil.example"})
    assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")
    assert client.post("/v1/session", json={"key": keys["sf-wuhan"]}).status_code == 403  # no portal header


def test_a_session_ends_when_its_time_is_up():
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0], seconds=60)
    sid = sessions.open("abc123abc123")
    assert sessions.key_of(sid) == "abc123abc123" and sessions.key_of("guess") is None
    now[0] = 60.0
    assert sessions.key_of(sid) is None


def test_a_key_signing_in_again_and_again_ends_only_its_own_oldest_sessions():
    sessions = Sessions(clock=lambda: 0.0)
    others = sessions.open("other000000a")
    mine = [sessions.open("mine0000000a") for _ in range(MAX_PER_KEY * 3)]
    assert sessions.key_of(others) == "other000000a"  # another firm's session stays open
    assert [sessions.key_of(sid) for sid in mine[-MAX_PER_KEY:]] == ["mine0000000a"] * MAX_PER_KEY
    assert sessions.key_of(mine[0]) is None and len(sessions._open) == MAX_PER_KEY + 1
    sessions.close(mine[-1])
    assert sessions.key_of(mine[-1]) is None and len(sessions._of_key["mine0000000a"]) == MAX_PER_KEY - 1


def test_an_address_guessing_keys_is_slowed_and_a_firm_signing_in_counts_its_requests(gateway):  # noqa: F811
    client, keys, _, gw = gateway
    wrong = "gck_000000000000_" + "A" * 43
    answers = [sign_in(client, wrong).status_code for _ in range(FAILURES_BURST)]
    assert answers == [401] * FAILURES_BURST
    r = sign_in(client, keys["sf-wuhan"])  # even a right key, from that address, waits now
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
    r = client.get("/v1/requests", headers={"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 429
    gw.failures.clear()
    assert sign_in(client, keys["sf-wuhan"]).status_code == 200
    gw.buckets.clear()


def test_csrf_refusal_reads_origin_and_fetch_metadata():
    ok = {"x-gc-portal": "1", "origin": "https://gw.example", "sec-fetch-site": "same-origin"}
    assert csrf_refusal("POST", ok, "https://gw.example") is None
    assert csrf_refusal("POST", ok | {"origin": "https://gw.example:443"}, "https://gw.example") is None
    assert csrf_refusal("POST", ok, "http://gw.example") is not None  # another scheme
    assert csrf_refusal("GET", {}, "https://gw.example") is None


def test_the_page_its_assets_and_the_lookups(gateway):  # noqa: F811
    client, _, _, _ = gateway
    page = client.get("/")
    assert page.status_code == 200 and "portal.js" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    assert client.get("/portal/portal.js").status_code == 200
    assert client.get("/static/vendor/echarts-4.9.0/echarts.min.js").status_code == 200
    assert "content-security-policy" not in client.get("/openapi.json").headers
    places = client.get("/v1/places", params={"q": "洪山"}).json()
    assert places[0]["adcode"] == "420111" and places[0]["name"] == "湖北省武汉市洪山区" and places[0]["county"]
    by_code = client.get("/v1/places", params=[("adcode", "420111"), ("adcode", "440106")]).json()
    assert [p["adcode"] for p in by_code] == ["420111", "440106"]
    cargo = client.get("/v1/cargo", params={"q": "口罩"}).json()
    assert cargo and cargo[0]["hs_code"] == "630790" and cargo[0]["priority"] == "P0"
    assert client.get("/v1/cargo", params={"q": "x" * 65}).status_code == 422


def test_over_https_the_cookie_is_secure(gateway):  # noqa: F811
    client, keys, _, _ = gateway
    client.base_url = "https://testserver"
    r = client.post("/v1/session", json={"key": keys["sf-wuhan"]}, headers=PORTAL | {"Origin": "https://testserver"})
    assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
    first = client.cookies.get(COOKIE)
    client.post("/v1/session", json={"key": keys["sf-wuhan"]}, headers=PORTAL)
    assert client.cookies.get(COOKIE) != first
    client.cookies.clear()
    client.cookies.set(COOKIE, first)
    assert client.get("/v1/requests").status_code == 401  # signing in again ended the session before
