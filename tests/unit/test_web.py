"""The pages' shared web plumbing: the access rules (token and cookie, Host, same origin, body types,
headers), the loopback rule and the live-event hub."""

import asyncio
import subprocess
import sys

import pytest
from aiohttp import ClientSession, CookieJar, web

from streams.web import (
    Access,
    Hub,
    announced,
    is_loopback,
    json_body,
    read_token,
    secure_app,
    site_url,
    sse,
    start_site,
    stop_site,
)
from tests.support.system import ROOT

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


async def _serve(access: Access) -> tuple[web.AppRunner, str]:
    app = secure_app(access)

    async def ok(request):
        return web.Response(text="ok")

    async def change(request):
        return web.json_response({"got": await json_body(request)})

    app.router.add_get("/", ok)
    app.router.add_post("/api/change", change)
    runner = await start_site(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/"


@pytest.fixture
async def site():
    runner, url = await _serve(Access.for_site("127.0.0.1", TOKEN, "station.post.example"))
    yield url
    await stop_site(runner)


def test_a_token_is_made_when_none_is_configured_and_never_twice_the_same():
    made, again = Access.for_site("127.0.0.1"), Access.for_site("127.0.0.1")
    assert made.generated and len(made.token) >= 40 and made.token != again.token
    assert made.cookie != again.cookie  # two pages on one host keep a cookie each
    configured = Access.for_site("127.0.0.1", TOKEN)
    assert not configured.generated and configured.token == TOKEN
    # A made token is printed once with the address; a configured one never is.
    assert announced(made, "127.0.0.1", 8077) == f"http://127.0.0.1:8077/?token={made.token}"
    assert TOKEN not in announced(configured, "127.0.0.1", 8077)


def test_the_token_comes_from_a_file_before_the_variable(tmp_path):
    (tmp_path / "token").write_text("from-the-file\n")
    assert read_token("from-the-variable", tmp_path / "token", "x") == "from-the-file"
    assert read_token("from-the-variable", None, "x") == "from-the-variable"
    assert read_token(None, None, "x") is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        read_token(None, tmp_path / "empty", "x")
    with pytest.raises(SystemExit, match="cannot read"):
        read_token(None, tmp_path / "missing", "x")


@pytest.mark.parametrize("command", [["checkpoint", "--id", "BX-1"], ["dashboard"]])
def test_a_token_on_the_command_line_is_refused(command):
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *command, "--token", "visible-to-ps"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--token is no longer taken" in done.stderr, done.stderr
    assert "--token-file" in done.stderr


async def test_a_token_is_required_on_loopback_too(site):
    async with ClientSession() as http:
        assert (await http.get(site)).status == 401
        assert (await http.get(site + "?token=wrong")).status == 401
        assert (await http.get(site, headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await http.get(site, headers={"Authorization": TOKEN})).status == 401  # not a Bearer
        assert (await http.get(site, headers={"Cookie": "gc_0123456789abcdef=wrong"})).status == 401
        assert (await http.get(site, headers=BEARER)).status == 200


async def test_the_first_visit_trades_the_token_in_the_url_for_a_strict_http_only_cookie(site):
    async with browser_like() as http:
        first = await http.get(site + "?token=" + TOKEN + "&q=1", allow_redirects=False)
        assert first.status == 303 and first.headers["Location"] == "/?q=1"
        cookie = first.headers["Set-Cookie"]
        assert TOKEN in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        # The client keeps the cookie: later requests carry no token at all.
        again = await http.get(site)
        assert again.status == 200 and "token" not in str(again.url)
    async with ClientSession() as http:  # a POST with the token in its URL is not taken
        refused = await http.post(site + "api/change?token=" + TOKEN, json={}, headers={"Origin": site[:-1]})
        assert refused.status == 401


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("rebind.attacker.example", 400),
        ("rebind.attacker.example:{port}", 400),
        ("10.0.0.7:{port}", 400),  # bound to loopback: an address it does not have
        ("", 400),
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("LOCALHOST", 200),
        ("[::1]:{port}", 200),
        ("station.post.example:{port}", 200),  # GC_PAGE_HOSTS
    ],
)
async def test_a_foreign_host_is_refused_even_with_the_token(site, host, status):
    port = site.rsplit(":", 1)[1].strip("/")
    async with ClientSession() as http:
        answer = await http.get(site, headers={**BEARER, "Host": host.format(port=port)})
        assert answer.status == status, await answer.text()


def test_bound_to_every_interface_any_address_but_no_other_name_is_a_host():
    access = Access.for_site("0.0.0.0", TOKEN)
    assert access.allows_host("192.168.1.20:8077") and access.allows_host("[fe80::1]:8077")
    assert access.allows_host("localhost:8077")
    assert not access.allows_host("rebind.attacker.example:8077") and not access.allows_host("tablet.local")
    named = Access.for_site("0.0.0.0", TOKEN, "tablet.local, Post-7.example")
    assert named.allows_host("tablet.local:8077") and named.allows_host("post-7.example")
    assert Access.for_site("10.1.2.3", TOKEN).allows_host("10.1.2.3:8077")
    assert not Access.for_site("10.1.2.3", TOKEN).allows_host("10.1.2.4:8077")


def browser_like() -> ClientSession:
    """A client that keeps cookies of an IP address's site, as a browser does (aiohttp's does not by default)."""
    return ClientSession(cookie_jar=CookieJar(unsafe=True))


async def _cookie_session(site: str) -> ClientSession:
    http = browser_like()
    assert (await http.get(site + "?token=" + TOKEN)).status == 200
    return http


async def test_a_cross_origin_post_is_refused(site):
    http = await _cookie_session(site)
    own = site[:-1]  # http://127.0.0.1:PORT
    try:
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": own.replace("127.0.0.1", "localhost")},  # another origin of the same machine
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},  # another port of this host is the same site
            {"Sec-Fetch-Site": "cross-site", "Origin": own},
            {},  # riding on the cookie and saying nothing of where it comes from
        ):
            answer = await http.post(site + "api/change", json={"kind": "arrival"}, headers=headers)
            assert answer.status == 403, (headers, await answer.text())
        answer = await http.post(site + "api/change", json={"a": 1}, headers={"Origin": own})
        assert answer.status == 200 and await answer.json() == {"got": {"a": 1}}
        same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
        assert (await http.post(site + "api/change", json={}, headers=same)).status == 200
    finally:
        await http.close()
    async with ClientSession() as api:  # an API client sends its token itself: no Origin needed
        assert (await api.post(site + "api/change", json={"a": 2}, headers=BEARER)).status == 200


async def test_a_form_or_text_body_is_refused_even_from_the_page_itself(site):
    http = await _cookie_session(site)
    own = {"Origin": site[:-1], "Sec-Fetch-Site": "same-origin"}
    try:
        for body, content_type in (
            ("kind=arrival&pass_id=330106000001", "application/x-www-form-urlencoded"),
            ('{"kind": "arrival"}', "text/plain"),
            ('{"kind": "arrival"}', "text/plain;charset=UTF-8"),
        ):
            answer = await http.post(site + "api/change", data=body, headers={**own, "Content-Type": content_type})
            assert answer.status == 415, await answer.text()
        huge = {"token": "x" * 70_000}  # over the 64 KiB of a message
        assert (await http.post(site + "api/change", json=huge, headers=own)).status == 413
        assert (await http.post(site + "api/change", json=[1, 2], headers=own)).status == 400
    finally:
        await http.close()


SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def assert_secure_headers(response, script_src: tuple[str, ...] = ("'self'",)) -> None:
    """The headers of every page; `script_src`: its sources (the station's adds 'wasm-unsafe-eval')."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status, name, response.headers.get(name))
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert script.split()[1:] == list(script_src), csp  # no inline script, no eval


async def test_every_response_carries_the_security_headers(site):
    async with ClientSession() as http:
        for answer in (
            await http.get(site, headers=BEARER),
            await http.get(site),  # 401
            await http.get(site, headers={**BEARER, "Host": "evil.example"}),  # 400
            await http.get(site + "?token=" + TOKEN, allow_redirects=False),  # 303
            await http.get(site + "nowhere", headers=BEARER),  # 404
            await http.post(site + "api/change", data="a=1", headers={**BEARER, "Content-Type": "text/plain"}),
        ):
            assert_secure_headers(answer)


def test_the_address_carries_the_token_it_is_given():
    assert site_url("0.0.0.0", 8077, "a b") == "http://0.0.0.0:8077/?token=a%20b"
    assert site_url("::", 8077, "t") == "http://[::]:8077/?token=t"
    assert site_url("127.0.0.1", 8077) == "http://127.0.0.1:8077/"


async def test_a_page_gets_the_first_events_then_what_is_published():
    hub = Hub()
    app = web.Application()

    async def events(request):
        return await sse(request, hub, first=[("hello", {"n": 0})])

    app.router.add_get("/events", events)
    runner = await start_site(app, "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            response = await http.get(f"http://127.0.0.1:{runner.addresses[0][1]}/events")
            assert await response.content.readuntil(b"\n\n") == b'event: hello\ndata: {"n":0}\n\n'
            async with asyncio.timeout(10):
                while hub.subscribers == 0:
                    await asyncio.sleep(0.01)  # polling a condition with a deadline
            hub.publish("risk", {"adcode": "420100", "level": "high"})
            assert (
                await response.content.readuntil(b"\n\n")
                == b'event: risk\ndata: {"adcode":"420100","level":"high"}\n\n'
            )
            response.close()
    finally:
        await runner.cleanup()


def test_a_page_that_falls_behind_is_dropped_not_waited_for():
    hub = Hub(limit=2)
    slow = hub.subscribe()
    for n in range(3):
        hub.publish("tick", {"n": n})
    assert hub.subscribers == 0
    assert slow.get_nowait() is None  # its stream ends; the page reconnects and reloads


def test_closing_the_hub_ends_every_open_stream():
    hub = Hub()
    first, second = hub.subscribe(), hub.subscribe()
    hub.publish("levels", {"420100": 2})
    hub.close()
    assert hub.subscribers == 0
    assert first.get_nowait() is None and second.get_nowait() is None  # the pending frame dropped: the end
