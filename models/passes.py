"""Passes: their numbers, their signed tokens, and the status state machine.

A pass number is 12 digits: the issuing county's adcode and a serial allocated on the
request's own partition (`allocate_pass_id`), so no two shipments share one and the same
request always yields the same pass, in any worker, in a replay.
Tokens are Ed25519-signed so a checkpoint can verify them offline with the public key.
The state machine is a pure function from (state, scan) to (state, status event).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import msgspec
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from msgspec.structs import replace

from . import credential
from .credential import Claims, InvalidToken
from .records import CheckpointScan, format_time, parse_time

__all__ = [
    "PassStatusKind",
    "TRANSITIONS",
    "IllegalTransition",
    "InvalidToken",
    "Claims",
    "PassState",
    "Signer",
    "SERIALS",
    "allocate_pass_id",
    "kafka_partition",
    "legacy_answers",
    "murmur2",
    "serial_start",
    "verify_token",
    "on_scan",
    "transition",
    "claimed_pass_id",
    "unverified_claims",
    "PassTerms",
    "REFUSALS",
    "refusal",
    "token_refusal",
    "scan_refusal",
    "scan_time_refusal",
    "SCAN_CLOCK_SKEW",
    "SCAN_QUEUE_LIMIT",
]


SERIALS = 1_000_000  # 6-digit serials per issuer


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    tail = length & ~3
    for i in range(0, tail, 4):
        k = (data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24) * m & 0xFFFFFFFF
        k ^= k >> 24
        h = (h * m & 0xFFFFFFFF) ^ (k * m & 0xFFFFFFFF)
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h = (h ^ data[tail]) * m & 0xFFFFFFFF
    h ^= h >> 13
    h = h * m & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (every client's, aiokafka's too) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def serial_start(shipment_id: str, serials: int = SERIALS) -> int:
    """Where a shipment's search for a free serial begins: a hash of its id."""
    return int.from_bytes(hashlib.sha256(shipment_id.encode()).digest()[:8], "big") % serials


def allocate_pass_id(
    issuer_adcode: str,
    shipment_id: str,
    *,
    partition: int,
    partitions: int,
    holder: Callable[[str], str | None],
    serials: int = SERIALS,
) -> str | None:
    """The shipment's 12-digit pass number: issuer adcode + 6-digit serial; None if none is free.

    From the shipment's hash serial on, the first serial whose pass number (a) Kafka's default
    partitioner puts on `partition`, the partition the request was decided on, and (b) is held
    by no other shipment (`holder`: pass number -> shipment id, that partition's allocations).
    Only the worker owning the partition allocates there, so no coordination is needed and two
    shipments never share a number; the same request decided again, in any worker or in a
    replay of the partition in offset order, finds the same number (its own, or the same free one).
    """
    issuer = issuer_adcode[:6]
    start = serial_start(shipment_id, serials)
    for step in range(serials):
        pass_id = f"{issuer}{(start + step) % serials:06d}"
        if kafka_partition(pass_id.encode(), partitions) != partition:
            continue
        owner = holder(pass_id)
        if owner is None or owner == shipment_id:
            return pass_id
    return None


# --- tokens ---------------------------------------------------------------------------------


class Signer:
    """Signs pass tokens (`models.credential`); Ed25519 signatures are deterministic, so tokens are too."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str) -> None:
        self._key = private_key
        self.key_id = key_id
        self.public_key = private_key.public_key()

    def token(self, claims: Mapping) -> str:
        """The token of the worker's claims: pid, plate, nbf, exp, cp, and the driver binding `drv` if any."""
        return credential.sign(claims, self._key, self.key_id)


def verify_token(token: object, keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey]) -> Claims:
    """The claims of a genuine token, of either format; InvalidToken for anything forged, altered,
    garbled or mistyped (`models.credential.verify`)."""
    return credential.verify(token, keys)


def unverified_claims(token: object) -> Claims:
    """What a token says, its signature unchecked (InvalidToken, a ValueError, when it is not a token)."""
    return credential.read_unverified(token)


def claimed_pass_id(token: object) -> str | None:
    """The pass id a token claims, read without verifying (for routing a scan to its pass)."""
    if token is None:
        return None
    try:
        pid = unverified_claims(token).pid
    except InvalidToken:
        return None
    return pid if len(pid) == 12 and pid.isdigit() else None


# --- state machine ----------------------------------------------------------------------------


class PassStatusKind(StrEnum):
    ISSUED = "issued"
    AT_CHECKPOINT = "at_checkpoint"
    IN_TRANSIT = "in_transit"
    HELD = "held"
    DELIVERED = "delivered"
    REROUTED = "rerouted"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"


S = PassStatusKind
_MOVING = {S.AT_CHECKPOINT, S.IN_TRANSIT, S.HELD, S.DELIVERED, S.REROUTED, S.SUSPENDED, S.REVOKED, S.EXPIRED}
TRANSITIONS: dict[S, frozenset[S]] = {
    S.ISSUED: frozenset(_MOVING),
    S.AT_CHECKPOINT: frozenset(_MOVING),
    S.IN_TRANSIT: frozenset(_MOVING),
    S.REROUTED: frozenset(_MOVING),
    # A held vehicle is released by a scan that verifies; it can also lose its pass.
    S.HELD: frozenset(
        {S.AT_CHECKPOINT, S.IN_TRANSIT, S.DELIVERED, S.HELD, S.SUSPENDED, S.REROUTED, S.REVOKED, S.EXPIRED}
    ),
    # A suspended pass comes back only through re-evaluation (a new safe route).
    S.SUSPENDED: frozenset({S.REROUTED, S.REVOKED, S.EXPIRED}),
    S.DELIVERED: frozenset(),
    S.REVOKED: frozenset(),
    S.EXPIRED: frozenset(),
}
ACTIVE = frozenset({S.ISSUED, S.AT_CHECKPOINT, S.IN_TRANSIT, S.REROUTED, S.HELD, S.SUSPENDED})


class IllegalTransition(ValueError):
    pass


def transition(current: S, new: S) -> S:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {new}")
    return new


class PassState(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """What the tracker knows of one pass. The worker stores it as MessagePack, its fields in this
    order (`models.stored`; a new field goes last, with a default); JSON is its form on the web and
    a worker's before 0.5 in its table (`from_json`)."""

    pass_id: str
    shipment_id: str
    plate: str
    priority: str
    shipper: str
    consignee: str
    origin: str
    destination: str
    trip: str
    valid_from: str
    valid_until: str
    departure_at: str
    route: dict
    status: str = S.ISSUED
    checkpoint_id: str | None = None
    arrived_at: str | None = None
    # Trips completed (arrivals at the destination) of a multi-trip pass: it runs its route again
    # and again, both ways, until it expires. Always 0 for a single-trip pass.
    trips: int = 0
    # The key that signed its current token (the decision's, or the latest reroute's or reissue's):
    # what a key's withdrawal looks it up by. None in a state stored before the keyring; the worker
    # reads it from the pass's decision then (`streams.handlers.Pipeline`).
    kid: str | None = None
    # The driver its tokens bind ({salt, id_hash}, `models.credential.DriverBinding.to_wire`): a
    # reroute's or reissue's token binds the same driver. None for a pass issued unbound.
    driver: dict | None = None
    # The answers to its scans are not part of the state (the pass would re-encode every earlier
    # answer on each scan): the worker keeps them beside it, keyed `pass_id/scan_id`.

    @property
    def checkpoint_ids(self) -> list[str]:
        return [c["checkpoint_id"] for c in self.route["checkpoints"]]

    @property
    def driver_binding(self) -> credential.DriverBinding | None:
        return None if self.driver is None else credential.DriverBinding.from_wire(self.driver)

    @property
    def terms(self) -> PassTerms:
        return PassTerms(self.status, self.plate, self.valid_from, self.valid_until, tuple(self.checkpoint_ids))

    def to_json(self) -> bytes:
        # `trips` is written only once a trip is completed, `kid` and `driver` only when known: the state of every
        # other pass is stored as before the fields existed.
        data = {k: v for k in self.__struct_fields__ if (v := getattr(self, k)) or k not in _UNSET}
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> PassState:
        """The state `to_json` wrote, or an older version's (no `trips`: 0; no `kid`: None; `scans`: see
        legacy_answers)."""
        data = orjson.loads(raw)
        data.pop("scans", None)
        return cls(**data)


_UNSET = frozenset({"trips", "kid", "driver"})  # fields a stored state leaves out while they are 0 / None


# --- verification at a checkpoint: the tracker's and the station's one rule -------------------


@dataclass(frozen=True, slots=True)
class PassTerms:
    """What a scan is verified against: the pass's status, plate, validity and current route."""

    status: str
    plate: str
    valid_from: str
    valid_until: str
    checkpoint_ids: tuple[str, ...]


# Every reason `refusal` gives, as an officer reads it: (Chinese, English).
REFUSALS: dict[str, tuple[str, str]] = {
    "unknown_pass": ("未知通行证", "unknown pass"),
    "bad_token": ("通行证签名无效（伪造或被篡改）", "the pass is not genuine"),
    "token_for_another_pass": ("通行证二维码属于另一张通行证", "the token belongs to another pass"),
    "plate_mismatch": ("车牌与通行证不符（人、车、证不一致）", "the plate does not match the pass"),
    "not_yet_valid": ("通行证尚未生效", "the pass is not valid yet"),
    "validity_ended": ("通行证已过有效期", "the pass's validity has ended"),
    "checkpoint_not_on_route": ("本检查站不在通行证路线上", "this checkpoint is not on the pass's route"),
    "pass_suspended": ("通行证已暂停（风险等级变化）", "the pass is suspended (a risk change)"),
    "pass_revoked": ("通行证已吊销", "the pass is revoked"),
    "pass_delivered": ("通行证已使用完毕（已送达）", "the pass is used up: delivered"),
    "pass_expired": ("通行证已失效", "the pass has expired"),
    "no_token": (
        "未出示通行证二维码：在册车辆，须核验驾驶员身份证并电话核实",
        "listed, no QR shown: check the driver's ID and call in",
    ),
    "route_not_known_here": (
        "通行证真实，但本站未收到其路线：请电话核实",
        "the pass is genuine, its route is not known at this station: call in",
    ),
    "driver_mismatch": ("驾驶员身份证与通行证不符（人、车、证不一致）", "the driver's ID does not match the pass"),
    "key_withdrawn": (
        "通行证签名密钥已撤销，请出示重新签发的通行证",
        "the pass was signed with a withdrawn key: show the reissued pass",
    ),
    "key_not_valid": (
        "通行证签名密钥不在有效期内（未生效或已过期）",
        "the pass was signed with a key outside its validity",
    ),
    "key_outside_jurisdiction": (
        "签名密钥无权签发该地区的通行证（越权签发）",
        "the pass was signed with a key not allowed to issue passes of its region",
    ),
    "scan_time_ahead": (
        "扫描时间晚于通道时间（检查站时钟有误）",
        "the scan is dated after the channel's time: the station's clock is wrong",
    ),
    "scan_time_too_old": (
        "扫描时间早于离线排队上限",
        "the scan is dated earlier than a station may hold scans offline",
    ),
}
# How far a scan's `scanned_at` (the checkpoint's claim) may lie from the channel's time when the
# worker reads it: a station's clock may run this far ahead (SCAN_CLOCK_SKEW), and a station may hold
# scans offline, forwarding them when it is back, for up to SCAN_QUEUE_LIMIT. A station offline
# longer than that has also not seen a day of revocations and risk changes, so what it let through
# offline is no longer the channel's to vouch for; the scan is answered held instead.
SCAN_CLOCK_SKEW = timedelta(minutes=5)
SCAN_QUEUE_LIMIT = timedelta(hours=24)
_ENDED = (S.DELIVERED, S.REVOKED, S.EXPIRED)


def _any_key(kid: str, pass_id: object, at: datetime) -> str | None:
    return None


def scan_time_refusal(scanned_at: datetime, now: datetime | None) -> str | None:
    """Why a scan dated `scanned_at` is not taken at that time by a channel whose time is `now`:
    dated ahead of it by more than SCAN_CLOCK_SKEW, or behind it by more than SCAN_QUEUE_LIMIT.
    None when it is taken (or no channel time was given: a replay of a scan answered in time)."""
    if now is None:
        return None
    if scanned_at > now + SCAN_CLOCK_SKEW:
        return "scan_time_ahead"
    if scanned_at < now - SCAN_QUEUE_LIMIT:
        return "scan_time_too_old"
    return None


def token_refusal(
    token: object,
    pass_id: str,
    plate: str,
    claims: Callable[[object], Claims],
    *,
    at: datetime | None = None,
    key_refusal: Callable[[str, object, datetime], str | None] = _any_key,
) -> str | None:
    """Why a shown token does not let `plate` through as pass `pass_id` at `at`; None if it does.
    No token at all is `no_token`: a plate is not a credential (a cloned plate is the fraud a pass
    exists to stop). `claims(token)` is the Claims of a genuine token, else InvalidToken (a token
    that is not text, or whose claims are mistyped, included); `key_refusal(kid, pid, at)` says why
    its key may not vouch for that pass number then (`models.keyring.Keyring.key_refusal`:
    withdrawn, outside its validity or its jurisdiction)."""
    if token is None:
        return "no_token"
    try:
        found = claims(token)
    except InvalidToken as exc:
        return f"bad_token: {exc}"
    if at is not None and (refused := key_refusal(found.kid, found.pid, at)):
        return refused
    if found.pid != pass_id:
        return "token_for_another_pass"
    if found.plate != plate:
        return "plate_mismatch"
    return None


def refusal(
    terms: PassTerms | None, *, checkpoint_id: str, plate: str, at: datetime, token_error: str | None = None
) -> str | None:
    """Why the vehicle `plate` may not pass `checkpoint_id` at `at`, in the order the tracker
    decides it; None when it may. `terms` is None for a pass unknown here."""
    if terms is None:
        return "unknown_pass" if token_error in (None, "no_token") else token_error
    status = S(terms.status)
    if status in _ENDED:
        return f"pass_{status}"
    if status is S.SUSPENDED:
        return "pass_suspended"
    if at > parse_time(terms.valid_until):
        return "validity_ended"
    if token_error:
        return token_error
    if at < parse_time(terms.valid_from):
        return "not_yet_valid"
    if plate != terms.plate:
        return "plate_mismatch"
    if checkpoint_id not in terms.checkpoint_ids:
        return "checkpoint_not_on_route"
    return None


def scan_refusal(
    terms: PassTerms | None,
    scan: CheckpointScan,
    pass_id: str,
    claims: Callable[[object], Claims],
    key_refusal: Callable[[str, object, datetime], str | None] = _any_key,
) -> str | None:
    """The whole verification of one scan: its token (and its key, as of the scan), then the pass's terms."""
    token_error = token_refusal(scan.token, pass_id, scan.plate, claims, at=scan.scanned_at, key_refusal=key_refusal)
    return refusal(
        terms, checkpoint_id=scan.checkpoint_id, plate=scan.plate, at=scan.scanned_at, token_error=token_error
    )


def legacy_answers(raw: bytes) -> dict[str, bytes]:
    """The scan answers a worker before 0.4 kept inside the stored state: scan_id -> status event."""
    if b'"scans":{"' not in raw:
        return {}
    return {k: v.encode() for k, v in orjson.loads(raw).get("scans", {}).items()}


def status_event(
    state: PassState,
    status: str,
    at: datetime | str,
    *,
    reason: str | None = None,
    checkpoint_id: str | None = None,
    dwell_seconds: float | None = None,
    dwell_target: int = 900,
    cause: str,
    **extra,
) -> dict:
    event = {
        "pass_id": state.pass_id,
        "shipment_id": state.shipment_id,
        "status": str(status),
        "at": at if isinstance(at, str) else format_time(at),
        "checkpoint_id": checkpoint_id,
        "reason": reason,
        "dwell_seconds": dwell_seconds,
        "dwell_exceeded": dwell_seconds is not None and dwell_seconds > dwell_target,
        "cause": cause,
    }
    if state.trip == "multi":
        # The trip the event belongs to: `state` is the pass before the event, so the arrival
        # that completes trip N says N, and what follows it belongs to trip N + 1.
        event["trip"] = state.trips + 1
    event.update(extra)
    return event


@dataclass(frozen=True)
class _ScanAtCheckpoint:
    """One scan applied to one pass: what an answer to the checkpoint is made of."""

    state: PassState
    scan: CheckpointScan
    current: S
    dwell_target: int

    @property
    def at(self) -> datetime:
        return self.scan.scanned_at

    @property
    def staying(self) -> str | None:
        """When the pass arrived at the scanning checkpoint, if it is still there (waiting, or held)."""
        return self.state.arrived_at if self.state.checkpoint_id == self.scan.checkpoint_id else None

    @property
    def at_destination(self) -> bool:
        return self.scan.checkpoint_id == self.state.checkpoint_ids[-1]

    def event(self, status: S, reason: str | None, dwell_seconds: float | None = None) -> dict:
        return status_event(
            self.state,
            status,
            self.at,
            reason=reason,
            checkpoint_id=self.scan.checkpoint_id,
            cause=f"scan:{self.scan.scan_id}",
            dwell_target=self.dwell_target,
            dwell_seconds=dwell_seconds,
        )

    def keep(self, reason: str) -> tuple[PassState, dict]:
        """The pass unchanged, and an event saying why."""
        return self.state, self.event(self.current, reason)

    def move(self, new: S, reason: str | None = None, dwell_seconds: float | None = None) -> tuple[PassState, dict]:
        """The pass moved to `new` at the scanning checkpoint."""
        transition(self.current, new)
        arrived = format_time(self.at) if new is S.AT_CHECKPOINT else self.staying if new is S.HELD else None
        moved = replace(self.state, status=new, checkpoint_id=self.scan.checkpoint_id, arrived_at=arrived)
        return moved, self.event(new, reason, dwell_seconds)


def _refused_scan(step: _ScanAtCheckpoint, refused: str) -> tuple[PassState, dict]:
    """A refused scan: a pass already at its end stays so, an ended validity expires it, anything
    else holds the truck at the checkpoint. A scan with no token changes nothing (`no_token`): it
    proves nothing about the vehicle, so it can neither release a hold nor hold the pass's genuine
    truck because a car with its plate cloned was stopped somewhere without a QR."""
    if refused in ("pass_delivered", "pass_revoked", "pass_expired", "pass_suspended", "no_token"):
        return step.keep(refused)
    if refused == "validity_ended":
        return step.move(S.EXPIRED, refused)
    return step.move(S.HELD, refused)


def _leaving_after_a_verified_arrival(step: _ScanAtCheckpoint) -> bool:
    """A departure from the checkpoint where the pass stands `at_checkpoint`: its arrival there showed
    a token that verified (a tokenless arrival changes nothing, a refused one holds it), so the
    officer's "departed" needs no QR again. A held pass is never released without one."""
    return step.scan.kind == "departure" and step.current is S.AT_CHECKPOINT and step.staying is not None


def _arrival_at_destination(step: _ScanAtCheckpoint) -> tuple[PassState, dict]:
    """A single-trip pass is delivered; a multi-trip one completes a trip, once per stay."""
    if step.state.trip != "multi":
        return step.move(S.DELIVERED, "arrived_at_destination")
    staying = step.staying
    if staying is not None:
        # Scanned again before leaving, or released from a hold there: the trip is completed
        # already, and the arrival time stays the first one.
        if step.current is S.AT_CHECKPOINT:
            return step.keep("already_at_destination")
        new, event = step.move(S.AT_CHECKPOINT, "already_at_destination")
        return replace(new, arrived_at=staying), event
    new, event = step.move(S.AT_CHECKPOINT, "trip_completed")
    return replace(new, trips=step.state.trips + 1), event


def _dwell_seconds(step: _ScanAtCheckpoint) -> float | None:
    """The wait at a checkpoint, from arrival to departure. Leaving the destination (a multi-trip
    truck's way back) follows unloading, not a queue: no dwell there."""
    state = step.state
    if (
        step.current is S.AT_CHECKPOINT
        and state.checkpoint_id == step.scan.checkpoint_id
        and state.arrived_at
        and not step.at_destination
    ):
        return round((step.at - parse_time(state.arrived_at)).total_seconds(), 3)
    return None


def on_scan(
    state: PassState, scan: CheckpointScan, *, token_error: str | None, dwell_target: int = 900
) -> tuple[PassState, dict]:
    """Apply one verified-or-not scan; returns the new state and the status event to publish.

    A scan that changes nothing (a terminal pass, a suspended one, a scan with no token) still
    yields an event saying so, so the checkpoint always gets an answer. A departure needs no token
    from a checkpoint whose arrival verified one (`_leaving_after_a_verified_arrival`).

    A single-trip pass ends `delivered` on arrival at the destination checkpoint (the route's
    last). A multi-trip pass completes a trip there instead (`at_checkpoint`, reason
    `trip_completed`, `trips` + 1) and runs on, both ways: every checkpoint of the route is
    valid in either direction, and each scan is verified as on the first trip. It ends when a
    scan comes after `valid_until` (`expired`).
    """
    step = _ScanAtCheckpoint(state, scan, S(state.status), dwell_target)
    if token_error == "no_token" and _leaving_after_a_verified_arrival(step):
        token_error = None
    refused = refusal(
        state.terms, checkpoint_id=scan.checkpoint_id, plate=scan.plate, at=scan.scanned_at, token_error=token_error
    )
    if refused:
        return _refused_scan(step, refused)
    if scan.kind == "arrival":
        return _arrival_at_destination(step) if step.at_destination else step.move(S.AT_CHECKPOINT)
    return step.move(S.IN_TRANSIT, dwell_seconds=_dwell_seconds(step))
