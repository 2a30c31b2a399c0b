"""The station's check: the core's verification (`models.passes.scan_refusal`, the tracker's own
rule) over the station's store and its cached keyring, GREEN or GREY, with no broker needed.
"""

from __future__ import annotations

from datetime import datetime

from models.keyring import Keyring
from models.passes import (
    REFUSALS,
    InvalidToken,
    PassTerms,
    claimed_pass_id,
    scan_refusal,
    unverified_claims,
    verify_token,
)
from models.policy import CLASS_NAMES
from models.records import CheckpointScan, normalise_plate

from .store import Store, route_ids

__all__ = ["check", "keyring_of"]


def _claims_with(keys):
    def claims(token: str) -> tuple:
        c = verify_token(token, keys)
        return c.get("pid"), c.get("plate"), c.get("kid")

    return claims


def keyring_of(keys: Keyring | dict) -> Keyring:
    """A ring as given, or one of public keys by kid (active since ever, none withdrawn)."""
    return keys if isinstance(keys, Keyring) else Keyring.of(keys)


def check(
    store: Store,
    keys: Keyring | dict,
    *,
    checkpoint_id: str,
    at: datetime,
    token: str | None = None,
    plate: str | None = None,
) -> dict:
    """GREEN or GREY for the vehicle `plate` showing `token` (or, with no token, the pass of its
    plate) at `checkpoint_id`: `scan_refusal`, the tracker's rule, over the store's last status and
    the keyring (a token of a key withdrawn by `at`, outside its validity or its jurisdiction is refused)."""
    ring = keyring_of(keys)
    token = (token or "").strip() or None
    plate = normalise_plate(plate) if plate and plate.strip() else None
    if plate is None and token is None:
        raise ValueError("give a token, a QR photo or a plate")
    # The pass of the vehicle: the one its plate holds here, else the one the token names.
    pass_id = (plate and store.by_plate(plate)) or claimed_pass_id(token)
    if plate is None:  # the token alone: the plate it claims is the one to compare (shown to the officer)
        plate = _claimed_plate(token)
    row = store.row(pass_id)
    terms = _terms(row) if row else _token_terms(token, ring.public_keys)
    scan = CheckpointScan("check", checkpoint_id, pass_id, token, plate or "", "arrival", at)
    reason = scan_refusal(terms, scan, pass_id or "", _claims_with(ring.public_keys), ring.key_refusal)
    return {
        "green": reason is None,
        "reason": reason,
        **_reason_text(reason, row),
        "pass_id": pass_id,
        "plate": plate,
        "token": token,
        "checkpoint_id": checkpoint_id,
        "pass": row and _shown(row, checkpoint_id),
    }


def _terms(row: dict) -> PassTerms:
    return PassTerms(row["status"], row["plate"], row["valid_from"], row["valid_until"], tuple(route_ids(row["route"])))


def _token_terms(token: str | None, keys: dict) -> PassTerms | None:
    """A genuine pass the store does not hold (not crossing here, or decided while offline), on
    its signed claims; no status seen yet. None when there is no genuine token."""
    try:
        claims = verify_token(token, keys) if token else None
    except InvalidToken:
        return None
    return claims and PassTerms("issued", claims["plate"], claims["nbf"], claims["exp"], tuple(claims["cp"]))


def _claimed_plate(token: str) -> str | None:
    try:
        return normalise_plate(unverified_claims(token).get("plate") or "")
    except Exception:
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
