"""A station started late reads the log from its beginning: each pass's decision on one topic,
its later statuses on another, each topic at its own pace. A status must not be taken before the
decision it follows and be lost there: a pass revoked before the station started is refused at
the station, not shown GREEN as just issued.

The pass is revoked as operators revoke one: its consignee, a key enterprise of the test's own,
is taken off the list."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from models.records import format_time
from streams.dev.simulator import make_credit_code
from tests.support.factories import STATION_TIMEOUT, station_request, until
from tests.support.system import StationProcess, start_station, stop_processes


async def station_says(station: StationProcess, token: str, checkpoint_id: str) -> dict:
    async with station.session() as http:
        async with http.post(station.url + "api/check", json={"token": token, "checkpoint_id": checkpoint_id}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def listed_and_approved(system, firm: str) -> dict:
    """A P2 request submitted now whose consignee is `firm`, sent (a fresh one each time) until the
    worker has `firm` on its list and approves it: the list reaches it on another topic."""

    async def approved():
        body = station_request("P2")
        body["consignee"] = {"credit_code": firm, "name": "绿通测试物资有限公司"}
        body["shipper"]["credit_code"] = make_credit_code(random.Random(), "330100")  # unlisted
        body["submitted_at"] = format_time(datetime.now(UTC))  # decided as of now: after the listing
        await system.send(system.topics.requests, body, key=body["shipment_id"])
        [m] = await system.tap.wait_for(
            system.topics.decisions, lambda m: m.key == body["shipment_id"].encode(), timeout=STATION_TIMEOUT
        )
        return m.json if m.json["decision"] == "approved" else None

    return await until(approved, STATION_TIMEOUT, f"a P2 request to {firm} to be approved")


async def test_a_station_started_after_a_revocation_refuses_the_revoked_passes(system, tmp_path):
    firm = make_credit_code(random.Random(), "330100")
    added = system.cli("enterprises", "add", firm, "绿通测试物资有限公司")
    assert added.returncode == 0, added.stderr
    passes = [(await listed_and_approved(system, firm))["pass"] for _ in range(3)]
    ids = {p["pass_id"] for p in passes}
    removed = system.cli("enterprises", "remove", firm)
    assert removed.returncode == 0, removed.stderr
    await system.tap.wait_for(
        system.topics.status,
        lambda m: m.json["pass_id"] in ids and m.json["status"] == "revoked",
        count=len(ids),
        timeout=STATION_TIMEOUT,
    )

    here = passes[0]["route"]["checkpoints"][0]["checkpoint_id"]
    station = start_station(system.env, tmp_path, [here], system.public_key_path).ready()
    try:
        for the_pass in passes:  # a lost status would leave the pass GREEN, as issued, for good
            answer = await until(
                _refused(station, the_pass["token"], here), STATION_TIMEOUT, "the station to refuse the pass"
            )
            assert (answer["pass_id"], answer["pass"]["status"]) == (the_pass["pass_id"], "revoked")
    finally:
        stop_processes([station.proc])


def _refused(station: StationProcess, token: str, checkpoint_id: str):
    async def check():
        answer = await station_says(station, token, checkpoint_id)
        return answer if answer["reason"] == "pass_revoked" else None

    return check
