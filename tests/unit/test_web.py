"""The pages' shared web plumbing: the loopback rule, the token guard and the live-event hub."""

import asyncio

import pytest
from aiohttp import ClientSession, web

from streams.web import Hub, html_page, is_loopback, site_url, sse, start_site, stop_site, token_guard


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_bound_beyond_loopback_without_a_token_is_refused():
    with pytest.raises(ValueError, match="beyond loopback"):
        token_guard("0.0.0.0", None)


async def _serve(guard) -> tuple[web.AppRunner, str]:
    app = web.Application(middlewares=[guard])

    async def ok(request):
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = await start_site(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/"


async def test_the_guard_wants_the_token_beyond_loopback():
    runner, url = await _serve(token_guard("0.0.0.0", "s3cret"))
    try:
        async with ClientSession() as http:
            assert (await http.get(url)).status == 401
            assert (await http.get(url + "?token=wrong")).status == 401
            assert (await http.get(url + "?token=s3cret")).status == 200
            assert (await http.get(url, headers={"Authorization": "Bearer s3cret"})).status == 200
    finally:
        await runner.cleanup()


async def test_on_loopback_the_guard_lets_everything_through():
    runner, url = await _serve(token_guard("127.0.0.1", "s3cret"))
    try:
        async with ClientSession() as http:
            assert (await http.get(url)).status == 200
    finally:
        await runner.cleanup()


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


async def test_a_page_carries_the_token_it_was_opened_with_to_its_assets(tmp_path):
    (tmp_path / "index.html").write_text('<script src="static/app.js{{query}}"></script>', encoding="utf-8")
    app = web.Application()
    app.router.add_get("/", html_page(tmp_path / "index.html"))
    runner = await start_site(app, "127.0.0.1", 0)
    try:
        async with ClientSession() as http:
            url = site_url("127.0.0.1", runner.addresses[0][1], "s3 cret")
            assert "token" not in url  # on loopback no token is needed
            assert (
                await (await http.get(url + "?token=s3%20cret")).text()
                == '<script src="static/app.js?token=s3+cret"></script>'
            )
            assert await (await http.get(url)).text() == '<script src="static/app.js"></script>'
    finally:
        await stop_site(runner)


def test_beyond_loopback_the_address_carries_the_token():
    assert site_url("0.0.0.0", 8077, "a b") == "http://0.0.0.0:8077/?token=a%20b"
    assert site_url("::", 8077, "t") == "http://[::]:8077/?token=t"
    assert site_url("127.0.0.1", 8077, None) == "http://127.0.0.1:8077/"
