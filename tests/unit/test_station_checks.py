"""The station's verification is the tracker's, and a printed pass verifies there: for every reason
the tracker holds a vehicle (or keeps a pass that cannot move), the station's check of the same
pass, token, plate, checkpoint and time is GREY with that very reason; a scan the tracker lets
through is GREEN. No broker: the station's own SQLite store, fed the decision and status events the worker publishes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace
from PIL import Image
from sqlmodel import Session

from models.passes import REFUSALS, PassState, Signer, kafka_partition
from models.records import CheckpointScan, format_time
from models.store.db import init_db, make_engine, project_batch
from streams.dev.simulator import Scenario
from streams.handlers import RecordMeta, Tables
from streams.keys import key_id
from streams.pass_print import find_cjk_font, pass_from_decision, render_pass
from streams.station.checks import check
from streams.station.store import Store
from tests.support.factories import (
    DEPARTURE,
    KEY,
    SIGNER,
    decision_of,
    forged,
    legacy_token_of,
    make_pipeline,
    make_tracker,
    token_of,
    wuhan_to_guangzhou,
)

OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEYS = {key_id(KEY.public_key()): KEY.public_key()}


@pytest.fixture(scope="module")
def tracker():
    return make_tracker(SIGNER, KEYS)


@pytest.fixture(scope="module")
def the_pass(tracker) -> PassState:
    return wuhan_to_guangzhou(tracker, priority="P0", trip="single")


FAR = timedelta(hours=49)
# name: (status the tracker and the station last saw, token (a function of the pass), plate, at
# (after departure), checkpoint (None: the first of the route), the reason both must give)
CASES = {
    "valid": ("issued", token_of, None, timedelta(hours=4), None, None),
    "forged_token": (
        "issued",
        lambda s: forged(token_of(s)),
        None,
        timedelta(hours=4),
        None,
        "bad_token: token signature does not verify",
    ),
    "garbled_token": (
        "issued",
        lambda s: "garbage",
        "鄂A12345",
        timedelta(hours=4),
        None,
        "bad_token: token is not two base64url parts",
    ),
    "unknown_key": (
        "issued",
        lambda s: token_of(s, Signer(OTHER, key_id(OTHER.public_key()))),
        None,
        timedelta(hours=4),
        None,
        f"bad_token: token signed with an unknown key (kid {key_id(OTHER.public_key())})",
    ),
    "token_for_another_pass": (
        "issued",
        lambda s: token_of(replace(s, pass_id="420111000009")),
        "鄂A12345",
        timedelta(hours=4),
        None,
        "token_for_another_pass",
    ),
    "plate_mismatch": ("issued", token_of, "鄂B99999", timedelta(hours=4), None, "plate_mismatch"),
    "not_yet_valid": ("issued", token_of, None, -timedelta(hours=1), None, "not_yet_valid"),
    "validity_ended": ("in_transit", token_of, None, FAR, None, "validity_ended"),
    "checkpoint_not_on_route": (
        "issued",
        token_of,
        None,
        timedelta(hours=4),
        "BX-1111-2222",
        "checkpoint_not_on_route",
    ),
    "pass_suspended": ("suspended", token_of, None, timedelta(hours=4), None, "pass_suspended"),
    "pass_revoked": ("revoked", token_of, None, timedelta(hours=4), None, "pass_revoked"),
    "pass_delivered": ("delivered", token_of, None, timedelta(hours=4), None, "pass_delivered"),
    "pass_expired": ("expired", token_of, None, timedelta(hours=4), None, "pass_expired"),
    # A plate is not a credential: no QR is its own answer, never GREEN, never a release.
    "no_token": ("held", lambda s: None, None, timedelta(hours=4), None, "no_token"),
    "token_not_text": ("issued", lambda s: 42, None, timedelta(hours=4), None, "bad_token: token is not text but int"),
    "mistyped_claims": (
        "issued",
        lambda s: legacy_token_of(s, kid=["x"]),
        None,
        timedelta(hours=4),
        None,
        "bad_token: token's key id is not text",
    ),
    "legacy_token": ("issued", legacy_token_of, None, timedelta(hours=4), None, None),
    "legacy_forged": (
        "issued",
        lambda s: forged(legacy_token_of(s)),
        None,
        timedelta(hours=4),
        None,
        "bad_token: token signature does not verify",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_the_station_says_what_the_tracker_says(name, tracker, the_pass, tmp_path):
    status, token, plate, after, checkpoint, reason = CASES[name]
    state = replace(the_pass, status=status)
    checkpoint = checkpoint or state.checkpoint_ids[0]
    plate = plate or state.plate
    at = DEPARTURE + after
    shown = token(state)
    scan = CheckpointScan("s-1", checkpoint, state.pass_id, shown, plate, "arrival", at)
    _, event = tracker.scan(state, scan, state.pass_id)
    assert event["reason"] == reason or (reason is None and event["status"] == "at_checkpoint"), event
    if reason == "no_token":  # changes nothing: a held pass stays held
        assert (event["status"], _) == (status, state)

    store = Store(tmp_path / "station.db", [checkpoint])
    store.take_decision(decision_of(the_pass))
    store.take_status({"pass_id": state.pass_id, "status": status, "at": format_time(DEPARTURE), "cause": "x"})
    answer = check(store, KEYS, checkpoint_id=checkpoint, at=at, token=shown, plate=plate)
    assert (answer["green"], answer["reason"]) == (reason is None, reason)
    assert answer["verdict"] == ("green" if reason is None else "check" if reason == "no_token" else "grey")
    assert answer["text_zh"] and answer["text_en"]


def test_an_unknown_pass_is_grey_at_both(tracker, the_pass, tmp_path):
    """No genuine token and no pass of that plate: the tracker knows no such pass, nor does the station."""
    checkpoint = the_pass.checkpoint_ids[0]
    scan = CheckpointScan(
        "s-1", checkpoint, "420111000777", None, "鄂C00000", "arrival", DEPARTURE + timedelta(hours=4)
    )
    assert tracker.scan(None, scan, scan.pass_id)[1]["reason"] == "unknown_pass"
    store = Store(tmp_path / "station.db", [checkpoint])
    store.take_decision(decision_of(the_pass))
    answer = check(store, KEYS, checkpoint_id=checkpoint, at=scan.scanned_at, plate=scan.plate)
    assert (answer["green"], answer["reason"]) == (False, "unknown_pass")


def test_a_genuine_pass_the_station_never_stored_is_checked_by_its_token(the_pass, tmp_path):
    """A pass the station has not heard of (its route does not cross here, or its decision came while
    the link was down) is verified on its signed claims: validity, plate, route."""
    here, elsewhere = the_pass.checkpoint_ids[0], "BX-1111-2222"
    at = DEPARTURE + timedelta(hours=4)
    on_route = check(Store(tmp_path / "a.db", [here]), KEYS, checkpoint_id=here, at=at, token=token_of(the_pass))
    assert (on_route["green"], on_route["plate"], on_route["pass"]) == (True, the_pass.plate, None)
    off = check(Store(tmp_path / "b.db", [elsewhere]), KEYS, checkpoint_id=elsewhere, at=at, token=token_of(the_pass))
    assert (off["green"], off["reason"]) == (False, "checkpoint_not_on_route")


def test_a_pass_rerouted_away_is_grey_at_both(tracker, the_pass, tmp_path):
    old_first = the_pass.checkpoint_ids[0]
    new_route = {
        **the_pass.route,
        "checkpoints": [c for c in the_pass.route["checkpoints"] if c["checkpoint_id"] != old_first],
    }
    rerouted = replace(the_pass, status="rerouted", route=new_route)
    at = DEPARTURE + timedelta(hours=4)
    scan = CheckpointScan("s-1", old_first, the_pass.pass_id, token_of(the_pass), the_pass.plate, "arrival", at)
    assert tracker.scan(rerouted, scan, the_pass.pass_id)[1]["reason"] == "checkpoint_not_on_route"
    store = Store(tmp_path / "station.db", [old_first])
    store.take_decision(decision_of(the_pass))
    assert check(store, KEYS, checkpoint_id=old_first, at=at, token=scan.token, plate=scan.plate)["green"]
    store.take_status(
        {
            "pass_id": the_pass.pass_id,
            "status": "rerouted",
            "at": format_time(at),
            "cause": "risk:43",
            "route": new_route,
            "token": token_of(rerouted),
        }
    )
    answer = check(store, KEYS, checkpoint_id=old_first, at=at, token=scan.token, plate=scan.plate)
    assert (answer["green"], answer["reason"]) == (False, "checkpoint_not_on_route")
    assert "改道" in answer["text_zh"] and "rerouted away" in answer["text_en"]


def test_a_plate_alone_finds_its_pass(the_pass, tmp_path):
    checkpoint = the_pass.checkpoint_ids[0]
    store = Store(tmp_path / "station.db", [checkpoint])
    store.take_decision(decision_of(the_pass))
    answer = check(store, KEYS, checkpoint_id=checkpoint, at=DEPARTURE + timedelta(hours=4), plate="鄂a12345")
    assert (answer["green"], answer["pass_id"], answer["pass"]["toll_exempt"]) == (False, the_pass.pass_id, True)
    assert (answer["verdict"], answer["reason"]) == ("check", "no_token")  # 待核验: listed, no QR shown
    assert "身份证" in answer["text_zh"] and "check the driver's ID and call in" in answer["text_en"]
    assert check(store, KEYS, checkpoint_id=checkpoint, at=DEPARTURE, plate="鄂C00000")["reason"] == "unknown_pass"


def test_every_reason_has_its_words():
    reasons = {r.split(":")[0] for *_, r in CASES.values() if r} | {"unknown_pass"}
    assert reasons <= set(REFUSALS)


# --- the driver's pass: printed, decoded from the image as a station's camera would, verified green

ROOT = Path(__file__).resolve().parents[2]


def test_a_printed_pass_decodes_and_verifies_green(the_pass, tmp_path):
    decision = decision_of(the_pass)
    image = render_pass(pass_from_decision(decision))
    image.save(tmp_path / "pass.png")
    codes = zxingcpp.read_barcodes(Image.open(tmp_path / "pass.png"))
    assert [c.text for c in codes] == [decision["pass"]["token"]]
    here = the_pass.checkpoint_ids[0]
    store = Store(tmp_path / "station.db", [here])
    store.take_decision(decision)
    answer = check(
        store, KEYS, checkpoint_id=here, at=DEPARTURE + timedelta(hours=4), token=codes[0].text, plate=the_pass.plate
    )
    assert (answer["green"], answer["pass_id"], answer["pass"]["toll_exempt"]) == (True, the_pass.pass_id, True)


def test_the_command_writes_png_and_pdf_from_a_decision_file(the_pass, tmp_path):
    (tmp_path / "decision.json").write_bytes(orjson.dumps(decision_of(the_pass)))
    for flag, name, magic in (("--png", "pass.png", b"\x89PNG"), ("--pdf", "pass.pdf", b"%PDF")):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "pass",
                "print",
                the_pass.pass_id,
                flag,
                str(tmp_path / name),
                "--from-decision",
                str(tmp_path / "decision.json"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).read_bytes().startswith(magic)
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "pass",
            "print",
            "999999000000",
            "--from-decision",
            str(tmp_path / "decision.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode != 0 and "holds pass" in wrong.stderr


def test_the_command_prints_a_pass_from_the_database_the_projector_writes(tmp_path):
    """SQLite hands the pass's times back without their offset: the printed validity is still UTC+8."""
    pipeline, scenario = make_pipeline(), Scenario(seed=5)
    for entry in scenario.enterprise_entries():
        pipeline.on_enterprise(None, orjson.dumps(entry), RecordMeta(pipeline.topics.enterprises, 0, 0, 0))
    body = scenario.request(0)
    key = body["shipment_id"].encode()
    outs = pipeline.on_request(
        key,
        orjson.dumps(body),
        RecordMeta(pipeline.topics.requests, kafka_partition(key, pipeline.partitions), 0, 0),
        tables=Tables.empty(),
    )
    decision = orjson.loads(outs[0].value)
    url = f"sqlite:///{tmp_path}/greenchannel.db"
    engine = make_engine(url)
    init_db(engine)
    with Session(engine) as session:
        project_batch(session, decisions=[decision])
        session.commit()
    engine.dispose()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "pass",
            "print",
            decision["pass"]["pass_id"],
            "--png",
            str(tmp_path / "pass.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GC_DATABASE_URL": url},
    )
    assert done.returncode == 0, done.stderr
    codes = zxingcpp.read_barcodes(Image.open(tmp_path / "pass.png"))
    assert [c.text for c in codes] == [decision["pass"]["token"]]


def test_a_chinese_font_is_found_here():
    assert find_cjk_font() is not None


# --- the station's HTTP side, served for real (no broker needed for it) ------------------------


async def test_the_page_wants_its_token_and_decodes_a_photo(the_pass, tmp_path):
    import aiohttp

    from streams.settings import Settings
    from streams.station.link import Station
    from streams.station.web import make_app
    from streams.web import Access, start_site

    here = the_pass.checkpoint_ids[0]
    store = Store(tmp_path / "station.db", [here])
    store.take_decision(decision_of(the_pass))
    station = Station(Settings(), [here], store, KEYS, clock_start=DEPARTURE + timedelta(hours=4))
    runner = await start_site(make_app(station, Access.for_site("0.0.0.0", "s3cret")), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    render_pass(pass_from_decision(decision_of(the_pass))).save(tmp_path / "pass.png")
    bearer = {"Authorization": "Bearer s3cret"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 401
            async with http.get(url + "static/station.js") as r:
                assert r.status == 401
            async with http.get(url, headers=bearer) as r:
                assert r.status == 200 and 'src="static/station.js"' in await r.text()
            form = aiohttp.FormData()
            form.add_field("plate", the_pass.plate)
            form.add_field("photo", (tmp_path / "pass.png").read_bytes(), filename="pass.png")
            async with http.post(url + "api/check", data=form, headers=bearer) as r:
                answer = await r.json()
            assert (answer["green"], answer["pass_id"], answer["checkpoint_id"]) == (True, the_pass.pass_id, here)
            blank = aiohttp.FormData()
            blank.add_field("photo", b"not an image at all" * 3, filename="x.png")
            async with http.post(url + "api/check", data=blank, headers=bearer) as r:
                assert r.status == 415
    finally:
        await runner.cleanup()


def test_expected_arrivals_are_those_still_to_reach_the_station(the_pass, tmp_path):
    first, second = the_pass.checkpoint_ids[:2]
    store = Store(tmp_path / "station.db", [second])
    store.take_decision(decision_of(the_pass))
    eta = datetime.fromisoformat(the_pass.route["checkpoints"][1]["eta"])
    assert [a["pass_id"] for a in store.expected(eta - timedelta(hours=3))] == [the_pass.pass_id]
    assert store.expected(eta - timedelta(hours=13)) == []  # not due within 12 hours yet
    store.take_status({"pass_id": the_pass.pass_id, "status": "in_transit", "checkpoint_id": first, "cause": "scan:x"})
    assert len(store.expected(eta)) == 1  # past the first checkpoint: still to come here
    store.take_status({"pass_id": the_pass.pass_id, "status": "in_transit", "checkpoint_id": second, "cause": "scan:y"})
    assert store.expected(eta) == []  # the system saw it here: no longer expected


def _shifted(route: dict, hours: float) -> dict:
    """The route with every ETA `hours` later."""
    return {
        **route,
        "checkpoints": [
            {**c, "eta": format_time(datetime.fromisoformat(c["eta"]) + timedelta(hours=hours))}
            for c in route["checkpoints"]
        ],
    }


def test_expected_arrivals_are_by_eta_within_the_window_and_leave_as_passes_end_arrive_or_turn_away(the_pass, tmp_path):
    """Due from 2 h late to 12 h ahead, by ETA; not once suspended, scanned here by the station,
    or rerouted away; a reroute brings its new ETA."""
    here = the_pass.checkpoint_ids[1]
    store = Store(tmp_path / "station.db", [here])
    now = datetime.fromisoformat(the_pass.route["checkpoints"][1]["eta"])

    def a_pass(n: int, hours: float) -> str:
        shifted = _shifted(the_pass.route, hours)
        state = replace(the_pass, pass_id=f"42011100{n:04d}", plate=f"鄂A{n:05d}", route=shifted)
        store.take_decision(decision_of(state))
        return state.pass_id

    soon, later = a_pass(1, 1), a_pass(2, 5)
    a_pass(3, -2.5), a_pass(4, 12.5)  # 2.5 h late; 12.5 h ahead
    suspended, scanned, rerouted, away = a_pass(5, 2), a_pass(6, 3), a_pass(7, 0.5), a_pass(8, 0.25)
    store.take_status({"pass_id": suspended, "status": "suspended", "cause": "risk:x"})
    store.record(
        {
            "scan_id": "s1",
            "pass_id": scanned,
            "checkpoint_id": here,
            "kind": "arrival",
            "plate": "鄂A00006",
            "scanned_at": format_time(now),
        }
    )
    moved = _shifted(the_pass.route, 6)
    token = token_of(replace(the_pass, pass_id=rerouted, plate="鄂A00007", route=moved))
    store.take_status({"pass_id": rerouted, "status": "rerouted", "cause": "risk:y", "route": moved, "token": token})
    elsewhere = {
        **the_pass.route,
        "checkpoints": [c for c in the_pass.route["checkpoints"] if c["checkpoint_id"] != here],
    }
    token = token_of(replace(the_pass, pass_id=away, plate="鄂A00008", route=elsewhere))
    store.take_status({"pass_id": away, "status": "rerouted", "cause": "risk:y", "route": elsewhere, "token": token})

    due = store.expected(now)
    assert [(a["pass_id"], a["checkpoint_id"]) for a in due] == [(soon, here), (later, here), (rerouted, here)]
    assert due[0] == {
        "pass_id": soon,
        "plate": "鄂A00001",
        "priority": the_pass.priority,
        "toll_exempt": True,
        "origin": due[0]["origin"],
        "destination": the_pass.route["checkpoints"][-1]["name"],
        "checkpoint_id": here,
        "eta": format_time(now + timedelta(hours=1)),
        "status": "issued",
    }
    assert due[2]["eta"] == format_time(now + timedelta(hours=6))
    assert store.checkpoint_names() == {here: the_pass.route["checkpoints"][1]["name"]}


def test_a_key_from_the_keys_topic_is_taken_only_under_its_own_id(the_pass, tmp_path):
    from tests.support.factories import ROOT_KEY, signed_key_record

    root = ROOT_KEY.public_key()
    here = the_pass.checkpoint_ids[0]
    store = Store(tmp_path / "station.db", [here])
    store.take_decision(decision_of(the_pass))
    at = DEPARTURE + timedelta(hours=4)
    assert check(store, {}, checkpoint_id=here, at=at, token=token_of(the_pass))["reason"].startswith("bad_token")
    store.take_key(signed_key_record(SIGNER.public_key), root)
    assert check(store, store.keyring(root), checkpoint_id=here, at=at, token=token_of(the_pass))["green"]
    assert set(Store(tmp_path / "station.db", [here]).keyring(root).public_keys) == set(KEYS)  # cached for a restart
    lying = {**signed_key_record(OTHER.public_key()), "kid": SIGNER.key_id}
    with pytest.raises(ValueError):
        store.take_key(lying, root)


def test_the_key_record_matches_its_schema():
    import json

    from jsonschema import Draft202012Validator

    from tests.support.factories import signed_key_record

    schema = json.loads((ROOT / "schemas" / "PassKey.schema.json").read_text())
    end = DEPARTURE + timedelta(days=365)
    for record in (
        signed_key_record(SIGNER.public_key),
        signed_key_record(SIGNER.public_key, "active", DEPARTURE, prefixes=["42", "4401"], not_after=end),
        signed_key_record(SIGNER.public_key, "withdrawn", DEPARTURE),
    ):
        Draft202012Validator(schema).validate(record)
    with pytest.raises(Exception, match="root_signature"):
        Draft202012Validator(schema).validate({k: v for k, v in record.items() if k != "root_signature"})


def test_a_pending_decision_gives_way_to_the_verified_one_of_the_same_pass(the_pass, tmp_path):
    """A decision whose key the station does not know yet is kept pending; a verified decision of
    the same pass number replaces it (a pending row may be no pass's at all), never the other way."""
    decision = decision_of(the_pass)
    p = decision["pass"]
    store = Store(tmp_path / "station.db", [the_pass.checkpoint_ids[0]])
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from models.passes import Signer, unverified_claims

    stranger = Signer(Ed25519PrivateKey.generate(), "0123456789abcdef")  # a key no root vouched for
    token = stranger.token(unverified_claims(p["token"]).signable())
    impostor = {**decision, "pass": {**p, "valid_until": "2099-01-01T00:00:00Z", "token": token}}
    assert store.take_decision(impostor, {})  # no key known yet: pending
    assert store.take_decision(decision, KEYS)
    row = store.verified_row(p["pass_id"], KEYS)
    assert row is not None and row["valid_until"] == p["valid_until"]
    assert store.take_decision(impostor, KEYS)  # pending again, and the verified row stays
    assert store.verified_row(p["pass_id"], KEYS)["valid_until"] == p["valid_until"]
