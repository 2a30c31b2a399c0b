"""The commands on the internal pass topic (`Topics.pass_events`), typed, and their wire codec.

A worker sends them to the partitions that hold the passes concerned: a scan re-keyed to its pass's
partition, the risk, key-list and keyring broadcasts to every partition, and the channel's clock.
On the wire a command is the canonical JSON of an object whose `kind` names it; `encode` writes it
and `decode` reads it, the only two places that know that form. `streams.handlers.Pipeline` handles
each decoded command by its type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from models.keyring import KeyEntry, parse_key_entry
from models.passes import PassState
from models.records import CheckpointScan, EnterpriseEntry, RegionRisk, canonical, format_time, parse_scan, parse_time
from models.reference import Source

__all__ = [
    "Command",
    "RekeyedScan",
    "RiskChanged",
    "EnterpriseChanged",
    "KeyChanged",
    "ClockTick",
    "LegacyIssue",
    "encode",
    "decode",
]


@dataclass(frozen=True, slots=True)
class RekeyedScan:
    """A scan that arrived on another partition than its pass's, sent there (keyed by its pass number)."""

    KIND: ClassVar[str] = "scan"
    pass_id: str
    scan: CheckpointScan
    body: dict[str, Any]  # the scan as it was received: it travels as it is
    received_at: str | None = None  # the channel's time where it arrived (since 0.6), as written

    def wire(self) -> dict[str, Any]:
        body = {"pass_id": self.pass_id, "scan": self.body}
        return body if self.received_at is None else {**body, "received_at": self.received_at}

    @classmethod
    def from_wire(cls, command: dict[str, Any]) -> RekeyedScan:
        pass_id, received_at = command["pass_id"], command.get("received_at")
        return cls(pass_id, parse_scan(command["scan"]), command["scan"], received_at)


@dataclass(frozen=True, slots=True)
class RiskChanged:
    """A region's risk level, to every partition: its passes in the region are re-evaluated."""

    KIND: ClassVar[str] = "risk"
    risk: RegionRisk
    source: Source | None = None  # where the worker read it on the risk topic (partition, offset)

    def wire(self) -> dict[str, Any]:
        risk = self.risk
        body = {"adcode": risk.adcode, "level": risk.level, "effective_at": format_time(risk.effective_at)}
        return _with_source(body, self.source)

    @classmethod
    def from_wire(cls, command: dict[str, Any]) -> RiskChanged:
        risk = RegionRisk(command["adcode"], command["level"], parse_time(command["effective_at"]))
        return cls(risk, _source(command))


@dataclass(frozen=True, slots=True)
class EnterpriseChanged:
    """A key-list entry, to every partition (the worker sends removals): the firm's passes are re-evaluated."""

    KIND: ClassVar[str] = "enterprise"
    entry: EnterpriseEntry
    source: Source | None = None  # where the worker read it on the key-enterprise topic

    def wire(self) -> dict[str, Any]:
        e = self.entry
        body = {
            "credit_code": e.credit_code,
            "name": e.name,
            "action": e.action,
            "effective_at": format_time(e.effective_at),
        }
        return _with_source(body, self.source)

    @classmethod
    def from_wire(cls, command: dict[str, Any]) -> EnterpriseChanged:
        entry = EnterpriseEntry(
            command["credit_code"], command["name"], command["action"], parse_time(command["effective_at"])
        )
        return cls(entry, _source(command))


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """A signing key made active or withdrawn, to every partition: each worker's ring learns it, and
    a withdrawal reissues the passes the key signed."""

    KIND: ClassVar[str] = "key"
    entry: KeyEntry
    source: Source | None = None  # where the worker read it on the keys topic

    def wire(self) -> dict[str, Any]:
        return _with_source(self.entry.to_record(), self.source)

    @classmethod
    def from_wire(cls, command: dict[str, Any]) -> KeyChanged:
        # The worker that read it on the keys topic checked its root signature (`Pipeline.on_key`).
        record = {k: v for k, v in command.items() if k != "source"}
        return cls(parse_key_entry(record, None, verify=False), _source(command))


@dataclass(frozen=True, slots=True)
class ClockTick:
    """A tick of the channel's clock, to one partition: `at` (RFC 3339, as written) is now there."""

    KIND: ClassVar[str] = "clock"
    at: str

    def wire(self) -> dict[str, Any]:
        return {"at": self.at}

    @classmethod
    def from_wire(cls, command: dict[str, Any]) -> ClockTick:
        return cls(command["at"])


@dataclass(frozen=True, slots=True)
class LegacyIssue:
    """A pass to store and issue, as a worker before 0.4 sent it after its decision. No worker sends
    it any more, and the audit reads only clock ticks from the internal topic; it is read still
    because one may be left unconsumed on the topic when such a worker is replaced (the README's
    "State left by an older worker"). Decoded only: never encoded."""

    KIND: ClassVar[str] = "issue"
    state: PassState
    command: dict[str, Any]  # as received: a collision's dead letter holds it, and `decided_at` is read from it

    @property
    def decided_at(self) -> str:
        return self.command["decided_at"]

    @classmethod
    def from_wire(cls, command: dict[str, Any]) -> LegacyIssue:
        return cls(PassState.from_json(orjson.dumps(command["state"])), command)


def _with_source(body: dict[str, Any], source: Source | None) -> dict[str, Any]:
    """A reference broadcast's body with where its record was read (since 0.6: additive; a pass
    partition's books note it, so a decision can say how far each reference topic was applied)."""
    return body if source is None else {**body, "source": list(source)}


def _source(command: dict[str, Any]) -> Source | None:
    source = command.get("source")
    if isinstance(source, list) and len(source) == 2 and all(type(n) is int and n >= 0 for n in source):
        return source[0], source[1]
    return None


Command = RekeyedScan | RiskChanged | EnterpriseChanged | KeyChanged | ClockTick | LegacyIssue

_DECODERS: dict[str, Callable[[dict[str, Any]], Command]] = {
    c.KIND: c.from_wire for c in (RekeyedScan, RiskChanged, EnterpriseChanged, KeyChanged, ClockTick, LegacyIssue)
}


def encode(command: RekeyedScan | RiskChanged | EnterpriseChanged | KeyChanged | ClockTick) -> bytes:
    """The command's bytes on the internal pass topic."""
    return canonical({"kind": command.KIND, **command.wire()})


def decode(value: bytes) -> Command:
    """The command `value` holds. Bytes that are not one raise (as they always did: the agent that
    reads them dead-letters them with the error, the audit counts them as dead letters)."""
    command = orjson.loads(value)
    kind = command["kind"]
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise ValueError(f"unknown pass command {kind!r}")
    return decoder(command)
