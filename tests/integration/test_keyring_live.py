"""The signing keyring through the broker, on topics of its own (the keys it rotates and withdraws
"now" stay out of the shared log the replay tests audit whole): `greenchannel keys rotate` and a
new pass signed with the new key while an older pass still verifies; `keys withdraw`, the older
pass reissued and its old token held at its next scan, `key_withdrawn`; a station refusing that
token offline; and the replay of the whole log proving every decision and status."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from datetime import UTC, datetime

import orjson

from models.passes import unverified_claims, verify_token
from models.records import format_time
from streams.dev.broker import free_port
from streams.keys import KeyDir, load_keyring
from tests.support.factories import STATION_TIMEOUT, decided, station_request, until
from tests.support.system import StationProcess, start_station, stop_processes


def keys_view(system) -> list[dict]:
    """The worker's ring now (GET /keys/)."""
    url = f"http://127.0.0.1:{system.env['GC_WEB_PORT']}/keys/"
    with urllib.request.urlopen(url, timeout=10) as response:
        return orjson.loads(response.read())["keys"]


async def scanned(system, the_pass: dict, token: str) -> dict:
    """An arrival at the pass's first checkpoint now, showing `token`; the worker's answer."""
    scan_id = f"kr-{uuid.uuid4().hex[:10]}"
    await system.send(
        system.topics.scans,
        {
            "scan_id": scan_id,
            "checkpoint_id": the_pass["route"]["checkpoints"][0]["checkpoint_id"],
            "pass_id": the_pass["pass_id"],
            "plate": the_pass["plate"],
            "kind": "arrival",
            "scanned_at": format_time(datetime.now(UTC)),
            "token": token,
        },
        key=the_pass["pass_id"],
    )
    [answer] = await system.tap.wait_for(
        system.topics.status, lambda m: m.json["cause"] == f"scan:{scan_id}", timeout=STATION_TIMEOUT
    )
    return answer.json


async def station_says(station: StationProcess, token: str, checkpoint_id: str) -> dict:
    async with station.session() as http:
        async with http.post(station.url + "api/check", json={"token": token, "checkpoint_id": checkpoint_id}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def test_rotate_then_withdraw_reissues_holds_the_old_token_and_replays(own_system, tmp_path):
    system = own_system
    keys = system.data_dir / "keys"
    first = KeyDir(keys).first().key_id
    old = (await decided(system, station_request("P0")))["pass"]
    assert unverified_claims(old["token"]).kid == first

    rotated = system.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = re.search(r"new key ([0-9a-f]{16})", rotated.stdout).group(1)
    assert (keys / f"{new_kid}.key").exists()
    # The worker signs with it once its ring has the record (requests after it are decided as of now).
    await until(
        lambda: any(k["kid"] == new_kid and k["signs"] for k in keys_view(system)),
        STATION_TIMEOUT,
        "the worker's ring to take the rotated key",
    )
    body = station_request("P0")
    body["submitted_at"] = format_time(datetime.now(UTC))
    new = (await decided(system, body))["pass"]
    ring = load_keyring([keys])
    assert verify_token(new["token"], ring).kid == new_kid
    assert (await scanned(system, old, old["token"]))["status"] == "at_checkpoint"  # the older key still verifies
    listed = system.cli("keys", "list")
    assert listed.returncode == 0 and first in listed.stdout and new_kid in listed.stdout, listed.stdout + listed.stderr

    withdrawn = system.cli("keys", "withdraw", first)
    assert withdrawn.returncode == 0, withdrawn.stderr
    cause = f"key:{first}:withdrawn:"
    reissues = await system.tap.wait_for(
        system.topics.status, lambda m: m.json["cause"].startswith(cause), timeout=STATION_TIMEOUT
    )
    assert {m.json["pass_id"] for m in reissues} == {old["pass_id"]}  # the other pass has the new key
    reissue = reissues[0].json
    assert (reissue["status"], reissue["reason"]) == ("at_checkpoint", "token_reissued")
    assert verify_token(reissue["token"], ring).kid == new_kid
    held = await scanned(system, old, old["token"])
    assert (held["status"], held["reason"]) == ("held", "key_withdrawn")
    assert (await scanned(system, old, reissue["token"]))["status"] == "at_checkpoint"

    # A station takes the ring from the topic; restarted with no broker at all, it still refuses
    # the withdrawn key's token and lets the reissued one through. The keys topic is keyed by kid,
    # so the withdrawal and the rotated key's record sit in different partitions and may reach the
    # station in either order: it has caught up once it knows both.
    here = old["route"]["checkpoints"][0]["checkpoint_id"]
    station = start_station(system.env, tmp_path, [here], keys / "pass-signing.pub").ready()
    try:
        await until(
            _caught_up(station, here, refused=old["token"], green=reissue["token"]),
            STATION_TIMEOUT,
            "the station to refuse the withdrawn key's token and take the rotated key's",
        )
    finally:
        stop_processes([station.proc])
    offline = {**system.env, "GC_BROKER_URL": f"kafka://127.0.0.1:{free_port()}"}
    station = start_station(offline, tmp_path, [here], tmp_path / "no-key-file.pub", "offline").ready()
    try:
        answer = await station_says(station, old["token"], here)
        assert answer["reason"] == "key_withdrawn", answer
        answer = await station_says(station, reissue["token"], here)
        assert answer["green"], answer
        assert new["route"]["checkpoints"][0]["checkpoint_id"] == here  # the same route: Hangzhou to Xinyu
        answer = await station_says(station, new["token"], here)
        assert answer["green"], answer
    finally:
        stop_processes([station.proc])

    done = system.cli("replay", "--since", "offset:0", "--json", "-", "--no-progress")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], json.dumps(report["mismatches"][:3], indent=1, ensure_ascii=False)
    assert report["events"]["keys"] >= 3 and report["statuses"]["by_status"]["held"] >= 1
    assert report["decisions"]["matched"] == report["decisions"]["recorded"] >= 2


def _caught_up(station: StationProcess, checkpoint_id: str, *, refused: str, green: str):
    """True once the station refuses `refused` (key_withdrawn) and lets `green` through."""

    async def check():
        withdrawn = (await station_says(station, refused, checkpoint_id))["reason"] == "key_withdrawn"
        return withdrawn and (await station_says(station, green, checkpoint_id))["green"]

    return check


async def test_a_forged_key_record_is_dead_lettered_and_no_key_signs_outside_its_jurisdiction(own_system, tmp_path):
    """Writing gc.pass.keys no longer mints passes: a record the pinned (development) root did not sign
    is dead-lettered and its key verifies nothing, at the worker or at a station; and a key the root
    did sign, for Guangdong (44) only, cannot vouch for a pass numbered elsewhere."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from models.keyring import ACTIVE, key_entry, key_id
    from models.passes import Signer
    from streams.keys import load_root_private
    from streams.station.checks import check
    from streams.station.store import Store

    system = own_system
    body = station_request("P0")
    body["submitted_at"] = format_time(datetime.now(UTC))
    decision = await decided(system, body)
    the_pass = decision["pass"]
    claims = unverified_claims(the_pass["token"]).signable()
    assert not the_pass["pass_id"].startswith("44")

    forged_key = Ed25519PrivateKey.generate()
    forged = Signer(forged_key, key_id(forged_key.public_key()))
    someone_elses_root = Ed25519PrivateKey.generate()
    wrongly_signed = key_entry(forged.public_key, ACTIVE, at=None, root=someone_elses_root)
    unsigned = {k: v for k, v in wrongly_signed.items() if k not in ("root_kid", "root_signature")}
    for record in (unsigned, wrongly_signed):
        await system.send(system.topics.keys, record, key=forged.key_id)
    letters = await system.tap.wait_for(
        system.topics.deadletter, lambda m: m.key == forged.key_id.encode(), count=2, timeout=STATION_TIMEOUT
    )
    errors = sorted(m.json["error"] for m in letters)
    assert "not signed by a root key" in errors[0] + errors[1] and "not by the pinned root" in errors[0] + errors[1]

    root = load_root_private(system.data_dir / "root" / "root.key")  # the development root, made on first run
    guangdong_key = Ed25519PrivateKey.generate()
    guangdong = Signer(guangdong_key, key_id(guangdong_key.public_key()))
    granted = key_entry(guangdong.public_key, ACTIVE, at=datetime.now(UTC), root=root, prefixes=["44"])
    await system.send(system.topics.keys, granted, key=guangdong.key_id)
    await until(
        lambda: any(k["kid"] == guangdong.key_id and k["prefixes"] == ["44"] for k in keys_view(system)),
        STATION_TIMEOUT,
        "the worker's ring to take Guangdong's key",
    )
    assert all(k["kid"] != forged.key_id for k in keys_view(system))

    here = the_pass["route"]["checkpoints"][0]["checkpoint_id"]
    forged_token, outside_token = forged.token(claims), guangdong.token(claims)
    held = await scanned(system, the_pass, forged_token)
    assert (held["status"], held["reason"].split(":")[0]) == ("held", "bad_token"), held
    held = await scanned(system, the_pass, outside_token)
    assert (held["status"], held["reason"]) == ("held", "key_outside_jurisdiction"), held

    # A station takes the same records through its store (`Store.take_key`, as its link does): the
    # forged ones are refused, the granted one taken with its prefixes.
    store = Store(tmp_path / "jurisdiction.db", [here])
    store.take_decision(decision)
    root_public = root.public_key()
    for path in sorted((system.data_dir / "keys").glob("*.record.json")):
        store.take_key(orjson.loads(path.read_bytes()), root_public)
    store.take_key(granted, root_public)
    for record in (unsigned, wrongly_signed):
        try:
            store.take_key(record, root_public)
        except ValueError:
            continue
        raise AssertionError("a station took a key record its root did not sign")
    ring, now = store.keyring(root_public), datetime.now(UTC)
    assert check(store, ring, checkpoint_id=here, at=now, token=forged_token)["reason"].startswith("bad_token")
    assert check(store, ring, checkpoint_id=here, at=now, token=outside_token)["reason"] == "key_outside_jurisdiction"
    assert check(store, ring, checkpoint_id=here, at=now, token=the_pass["token"])["green"]
