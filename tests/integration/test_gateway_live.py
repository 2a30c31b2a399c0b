"""The firms' gateway through the running worker and projector, in every lane: two firms apply over HTTP,
each follows and prints its own pass and sees nothing of the other's; a revoked key is refused."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from streams.dev.simulator import Scenario
from tests.support.factories import STATION_TIMEOUT, until
from tests.support.system import start_gateway, stop_processes


@pytest.fixture(scope="module")
async def gateway(system):
    run = uuid.uuid4().hex[:6]
    scenario = Scenario(seed=2626)
    firms = {}
    for name in ("sf", "jd"):
        firm_id = f"{name}-{run}"
        shipper = scenario.request(len(firms), kind="P0")["shipper"]["credit_code"]
        added = system.cli("firms", "add", firm_id, "--name", f"{name} logistics", "--credit-code", shipper)
        assert added.returncode == 0, added.stdout + added.stderr
        made = system.cli("firms", "key", "new", firm_id)
        assert made.returncode == 0, made.stdout + made.stderr
        firms[name] = (firm_id, shipper, made.stdout.strip().splitlines()[-1])
    process = start_gateway(system.env_as("gateway"), system.data_dir, f"gateway-{run}")
    try:
        process.ready()
        yield process, firms, scenario
    finally:
        stop_processes([process.proc])


def _request(scenario: Scenario, n: int, shipment_id: str, shipper: str) -> dict:
    body = scenario.request(n, kind="P0")
    body["shipment_id"] = shipment_id
    body["shipper"]["credit_code"] = shipper
    return body


async def _decided(http, url: str, key: str, shipment_id: str) -> dict:
    async def look():
        async with http.get(f"{url}v1/requests/{shipment_id}", headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200, await r.text()
            view = await r.json()
            return view if view["status"] != "pending" else None

    return await until(look, STATION_TIMEOUT, f"the decision of {shipment_id} at the gateway")


async def test_two_firms_apply_follow_and_print_their_own_passes_and_nothing_else(system, gateway):
    process, firms, scenario = gateway
    (_, sf_shipper, sf_key), (jd_id, jd_shipper, jd_key) = firms["sf"], firms["jd"]
    sf, jd = ({"Authorization": f"Bearer {k}"} for k in (sf_key, jd_key))
    async with aiohttp.ClientSession() as http:
        for n, (headers, shipper) in enumerate(((sf, sf_shipper), (jd, jd_shipper))):
            async with http.post(
                f"{process.url}v1/requests", json=_request(scenario, n, "SO-1", shipper), headers=headers
            ) as r:
                assert r.status == 202, await r.text()
        sf_view = await _decided(http, process.url, sf_key, "SO-1")
        jd_view = await _decided(http, process.url, jd_key, "SO-1")
        assert sf_view["status"] == jd_view["status"] == "approved", (sf_view, jd_view)
        sf_pass, jd_pass = sf_view["decision"]["pass_id"], jd_view["decision"]["pass_id"]
        assert sf_pass != jd_pass

        async def status_issued():
            async with http.get(f"{process.url}v1/passes/{sf_pass}", headers=sf) as r:
                return (await r.json()) if r.status == 200 else None

        the_pass = await until(status_issued, STATION_TIMEOUT, "the pass at the gateway")
        assert the_pass["shipment_id"] == "SO-1" and the_pass["token"].startswith("GC1:")
        async with http.get(f"{process.url}v1/passes/{sf_pass}/print.pdf", headers=sf) as r:
            assert r.status == 200 and (await r.read()).startswith(b"%PDF")
        for path in (f"v1/passes/{sf_pass}", f"v1/passes/{sf_pass}/print.png"):
            async with http.get(process.url + path, headers=jd) as r:
                assert r.status == 404, path
        decisions = system.tap.where(system.topics.decisions, lambda m: m.key == f"gw:{jd_id}:SO-1".encode())
        assert decisions and decisions[0].json["requested_by"] == jd_id  # who asked, on the record


async def test_a_shipper_the_firm_may_not_act_for_and_a_revoked_key_are_refused(system, gateway):
    process, firms, scenario = gateway
    (sf_id, _, sf_key), (_, jd_shipper, _) = firms["sf"], firms["jd"]
    headers = {"Authorization": f"Bearer {sf_key}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{process.url}v1/requests", json=_request(scenario, 5, "SO-2", jd_shipper), headers=headers
        ) as r:
            assert r.status == 403 and (await r.json())["error"] == "not_acting_for"
        key_id = sf_key.split("_")[1]
        revoked = system.cli("firms", "key", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        async with http.get(f"{process.url}v1/requests", headers=headers) as r:
            assert r.status == 401
    assert sf_id.startswith("sf-")
