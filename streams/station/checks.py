"""The station's check: the core's verification (`models.passes.scan_refusal`, the tracker's own
rule) over the station's store and its cached keyring, GREEN, 待核验 (listed, no QR shown) or GREY,
with no broker needed.
"""

from __future__ import annotations

from datetime import datetime

from models.credential import DriverBinding
from models.keyring import Keyring
from models.passes import (
    REFUSALS,
    Claims,
    InvalidToken,
    PassTerms,
    claimed_pass_id,
    scan_refusal,
    unverified_claims,
    verify_token,
)
from models.policy import CLASS_NAMES
from models.records import CheckpointScan, format_time, normalise_plate

from .store import Store, route_ids

__all__ = ["check", "keyring_of", "DRIVER_TEXT"]


def _claims_with(keys):
    def claims(token: object) -> Claims:
        return verify_token(token, keys)

    return claims


def keyring_of(keys: Keyring | dict) -> Keyring:
    """A ring as given, or one of public keys by kid (active since ever, none withdrawn)."""
    return keys if isinstance(keys, Keyring) else Keyring.of(keys)


# What the officer is told of the driver (人车证一致): (Chinese, English) by the `driver` field.
DRIVER_TEXT = {
    "matched": ("驾驶员身份证与通行证一致", "driver: the ID matches the pass"),
    "not_matched": ("驾驶员身份证与通行证不符", "driver: the ID does not match the pass"),
    "not_bound": ("通行证未绑定驾驶员：请对照纸质材料核验身份证", "driver not bound: check the ID against the paper"),
    "not_checked": ("未核验驾驶员身份证", "driver: no ID typed"),
}


_CALL_IN = ("no_token", "route_not_known_here")  # 待核验: not refused, not verified here; the officer calls in


def check(
    store: Store,
    keys: Keyring | dict,
    *,
    checkpoint_id: str,
    at: datetime,
    token: object = None,
    plate: str | None = None,
    driver_id: str | None = None,
) -> dict:
    """The verdict for the vehicle `plate` showing `token` (or, with no token, the pass of its
    plate) at `checkpoint_id`: `scan_refusal`, the tracker's rule, over the store's last status and
    the keyring (a token of a key withdrawn by `at`, outside its validity or its jurisdiction is refused).

    `verdict` is green only for a token that verifies for that plate, pass, checkpoint and time;
    `check` (待核验) for a listed plate shown with no QR: the officer checks the driver's ID and
    calls in; grey for anything else. `driver` says whether the ID typed (`driver_id`) is the one
    the pass binds. The pass's terms are its stored row's when its decision's token verified here,
    else those the shown token signs."""
    ring = keyring_of(keys)
    if isinstance(token, str):
        token = token.strip() or None
    plate = normalise_plate(plate) if plate and plate.strip() else None
    if plate is None and token is None:
        raise ValueError("give a token, a QR photo or a plate")
    # The pass of the vehicle: the one its plate holds here, else the one the token names.
    pass_id = (plate and store.by_plate(plate)) or claimed_pass_id(token)
    if plate is None:  # the token alone: the plate it claims is the one to compare (shown to the officer)
        plate = _claimed_plate(token)
    row = store.verified_row(pass_id, ring.public_keys)
    shown = _genuine(token, ring.public_keys)
    terms = _terms(row) if row else _token_terms(shown, store.row(pass_id))
    scan = CheckpointScan("check", checkpoint_id, pass_id, token, plate or "", "arrival", at)  # type: ignore[arg-type]
    reason = scan_refusal(terms, scan, pass_id or "", _claims_with(ring.public_keys), ring.key_refusal)
    if reason == "checkpoint_not_on_route" and row is None and shown and shown.cp is None:
        reason = "route_not_known_here"  # a genuine token of a long route, by digest, and no decision stored here
    binding = shown.driver if shown else _stored_binding(row)
    driver = _driver(binding, driver_id)
    if reason is None and driver == "not_matched":
        reason = "driver_mismatch"
    verdict = "green" if reason is None else "check" if reason in _CALL_IN else "grey"
    zh, en = DRIVER_TEXT[driver]
    return {
        "green": verdict == "green",
        "verdict": verdict,
        "reason": reason,
        **_reason_text(reason, row),
        "driver": driver,
        "driver_zh": zh,
        "driver_en": en,
        "pass_id": pass_id,
        "plate": plate,
        "token": token if isinstance(token, str) else None,
        "checkpoint_id": checkpoint_id,
        "pass": row and _shown(row, checkpoint_id),
    }


def _terms(row: dict) -> PassTerms:
    return PassTerms(row["status"], row["plate"], row["valid_from"], row["valid_until"], tuple(route_ids(row["route"])))


def _genuine(token: object, keys: dict) -> Claims | None:
    """The claims of the shown token if it verifies, else None."""
    try:
        return verify_token(token, keys) if token is not None else None
    except InvalidToken:
        return None


def _token_terms(claims: Claims | None, unverified: dict | None) -> PassTerms | None:
    """A genuine pass the store holds no verified row of (not crossing here, decided while offline,
    or its decision's key not known yet), on its signed claims; its status the store's, if any (a
    status is never signed), else issued. None when there is no genuine token."""
    if claims is None:
        return None
    status = unverified["status"] if unverified else "issued"
    return PassTerms(status, claims.plate, format_time(claims.nbf), format_time(claims.exp), claims.cp or ())


def _stored_binding(row: dict | None) -> DriverBinding | None:
    try:
        return unverified_claims(row["token"]).driver if row else None  # the row verified: its token did
    except InvalidToken:
        return None


def _driver(binding: DriverBinding | None, driver_id: str | None) -> str:
    if binding is None:
        return "not_bound"
    if not driver_id or not driver_id.strip():
        return "not_checked"
    return "matched" if binding.matches(driver_id) else "not_matched"


def _claimed_plate(token: object) -> str | None:
    try:
        return normalise_plate(unverified_claims(token).plate)
    except (InvalidToken, ValueError):
        return None


def _reason_text(reason: str | None, row: dict | None) -> dict:
    if reason is None:
        return {"text_zh": "人、车、证一致，路线经过本站", "text_en": "pass, vehicle and route match"}
    code, _, detail = reason.partition(": ")
    zh, en = REFUSALS.get(code, (code, code))
    if code == "checkpoint_not_on_route" and row and row["status"] == "rerouted":
        zh, en = "通行证已改道，不再经过本检查站", "the pass was rerouted away from this checkpoint"
    return {"text_zh": zh, "text_en": f"{en} ({detail})" if detail else en}


def _shown(row: dict, checkpoint_id: str) -> dict:
    zh, en = CLASS_NAMES.get(row["priority"], ("", ""))
    return {
        "pass_id": row["pass_id"],
        "plate": row["plate"],
        "priority": row["priority"],
        "class_name": f"{zh} {en}".strip(),
        "toll_exempt": row["toll_exempt"],
        "valid_from": row["valid_from"],
        "valid_until": row["valid_until"],
        "trip": row["trip"],
        "status": row["status"],
        "origin": row["origin"],
        "destination": row["destination"],
        "checkpoints": [
            {
                "checkpoint_id": c["checkpoint_id"],
                "name": c["name"],
                "eta": c["eta"],
                "here": c["checkpoint_id"] == checkpoint_id,
            }
            for c in row["route"]["checkpoints"]
        ],
    }
