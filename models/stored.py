"""The worker's table values, typed: what it keeps of a pass, a decision, a scan's answer and the
reference data a partition has applied, each a msgspec Struct stored as MessagePack.

Read by field name, never by slicing bytes. A Struct is `array_like` (its fields in order, no names),
so a new field goes last with a default, and older values still decode. The bytes a worker
publishes (a decision, a status event) are kept as they went out (`body`), so a repeat gets them
again byte for byte: the wire contract stays JSON.

Values a worker before 0.5 stored are JSON; a MessagePack value of these types is an array, whose
first byte is never `{`, so each reader tells them apart by that byte (`load_*`).
"""

from __future__ import annotations

import msgspec
import orjson

from .passes import InvalidToken, PassState, unverified_claims

__all__ = [
    "Decided",
    "DecidedHead",
    "Answer",
    "Applied",
    "dump",
    "load_pass",
    "load_decided",
    "load_decided_head",
    "load_answer",
    "load_applied",
    "load_holder",
    "is_json",
]


class DecidedHead(msgspec.Struct, frozen=True, array_like=True):
    """The fields of a stored decision the worker reads without its bytes (its body comes last)."""

    decided_at: str
    pass_id: str | None = None  # the pass it issued; None: refused (or no pass)
    kid: str | None = None  # the key that signed its token


class Decided(msgspec.Struct, frozen=True, array_like=True):
    """A decision filed in the `decided` table: its fields, then the bytes published."""

    decided_at: str
    pass_id: str | None
    kid: str | None
    body: bytes  # the decision as published (canonical JSON), byte for byte

    @property
    def head(self) -> DecidedHead:
        return DecidedHead(self.decided_at, self.pass_id, self.kid)


class Answer(msgspec.Struct, frozen=True, array_like=True):
    """The status event that answered a scan: its time (a CloudEvents header), then the bytes published."""

    at: str
    body: bytes


# Reference topic name -> partition -> the next offset applied (a decision's `known` shape).
Applied = dict[str, dict[int, int]]

_ENCODER = msgspec.msgpack.Encoder()
_PASS = msgspec.msgpack.Decoder(PassState)
_DECIDED = msgspec.msgpack.Decoder(Decided)
_DECIDED_HEAD = msgspec.msgpack.Decoder(DecidedHead)
_ANSWER = msgspec.msgpack.Decoder(Answer)
_APPLIED = msgspec.msgpack.Decoder(Applied)


_BUFFER = bytearray()  # encoded into, then copied out right-sized (see `dump`)


def dump(value: PassState | Decided | Answer | Applied) -> bytes:
    """The stored bytes of a value (MessagePack), in an allocation of their own size: msgspec's
    `encode` returns its output in the buffer it grew while writing (about 1.4 times the length for
    a decision; tests/unit/test_records.py), as orjson does (`models.records.kept`)."""
    _ENCODER.encode_into(value, _BUFFER)
    return bytes(_BUFFER)


def is_json(raw: bytes) -> bool:
    """A value stored by a worker before 0.5 (a JSON object), not MessagePack."""
    return raw[:1] == b"{"


def load_pass(raw: bytes) -> PassState:
    return PassState.from_json(raw) if is_json(raw) else _PASS.decode(raw)


def load_decided(raw: bytes) -> Decided:
    return _decided_of_json(raw) if is_json(raw) else _DECIDED.decode(raw)


def load_decided_head(raw: bytes) -> DecidedHead:
    """What `load_decided` reads but the bytes published (not copied out)."""
    return _decided_of_json(raw).head if is_json(raw) else _DECIDED_HEAD.decode(raw)


def load_answer(raw: bytes) -> Answer:
    return Answer(orjson.loads(raw)["at"], raw) if is_json(raw) else _ANSWER.decode(raw)


def load_applied(raw: bytes) -> Applied:
    if is_json(raw):
        return {name: {int(p): o for p, o in vector.items()} for name, vector in orjson.loads(raw).items()}
    return _APPLIED.decode(raw)


def _decided_of_json(raw: bytes) -> Decided:
    """A decision a worker before 0.5 kept as its published bytes: its fields read from them (the key
    from its token's claims, unverified: the worker signed it)."""
    decision = orjson.loads(raw)
    the_pass = decision.get("pass")
    if not isinstance(the_pass, dict):
        return Decided(decision["decided_at"], None, None, raw)
    try:
        kid: str | None = unverified_claims(the_pass["token"]).kid
    except (KeyError, TypeError, InvalidToken):
        kid = None
    return Decided(decision["decided_at"], the_pass.get("pass_id"), kid, raw)


class _Holder(msgspec.Struct, frozen=True, array_like=True):
    """The first fields of a stored PassState: the pass and the shipment holding its number."""

    pass_id: str
    shipment_id: str


_HOLDER = msgspec.msgpack.Decoder(_Holder)


def load_holder(raw: bytes) -> str:
    """The shipment id a stored pass state names, the rest of it left undecoded."""
    return orjson.loads(raw)["shipment_id"] if is_json(raw) else _HOLDER.decode(raw).shipment_id
