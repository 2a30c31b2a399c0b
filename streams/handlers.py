"""What the worker does with each message, without Kafka: raw input in, output messages out.

Every input ends as exactly one output (a decision, a status event, a forwarded command or a
dead-letter record); the Faust agents in `streams.worker` only move bytes between topics and
tables, so the same code serves the live worker, the tests of the core and a replay.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

from models.decide import Decider, Decision
from models.keyring import WITHDRAWN
from models.passes import allocate_pass_id, claimed_pass_id, kafka_partition
from models.records import (
    CheckpointScan,
    Unparseable,
    canonical,
    format_time,
    load_object,
    origin_refusal,
    parse_enterprise,
    parse_request,
    parse_risk,
    parse_scan,
    parse_time,
    record_time,
)
from models.stored import Answer, Applied, Decided, load_applied, load_holder
from models.tracking import CheckpointBoard, Lifetimes, PassIndex, Tracker, epoch_seconds

from .commands import (
    ClockTick,
    Command,
    EnterpriseChanged,
    KeyChanged,
    LegacyIssue,
    RekeyedScan,
    RiskChanged,
    decode,
    encode,
)
from .metrics import Meter
from .state import WorkingState
from .wire import status_ce_id

log = logging.getLogger("greenchannel")

__all__ = [
    "Out",
    "RecordMeta",
    "Topics",
    "Tables",
    "PassHolders",
    "Pipeline",
    "clock_command",
    "cloudevent_headers",
    "STALE_REQUEST",
    "decision_time",
    "ReferenceBehind",
]


@dataclass(frozen=True, slots=True)
class Topics:
    requests: str
    enterprises: str
    risk: str
    decisions: str
    scans: str
    status: str
    deadletter: str
    pass_events: str  # internal: everything about a pass, keyed by pass_id
    keys: str = "gc.pass.keys"  # the signing keyring: public keys with their status, keyed by key id
    # Requests the firms' gateway publishes for the firms it authenticated: written by the gateway's
    # principal only, so its `requested_by` is the channel's word (models.records.origin_refusal).
    gateway_requests: str = "gc.gateway.requests"

    @classmethod
    def with_prefix(cls, prefix: str = "gc.") -> Topics:
        return cls(
            f"{prefix}shipment.requests",
            f"{prefix}enterprises",
            f"{prefix}region.risk",
            f"{prefix}pass.decisions",
            f"{prefix}checkpoint.scans",
            f"{prefix}pass.status",
            f"{prefix}deadletter",
            f"{prefix}pass.events",
            f"{prefix}pass.keys",
            f"{prefix}gateway.requests",
        )

    @property
    def request_topics(self) -> tuple[str, str]:
        """Where requests are read: the firms' Kafka route and the gateway's."""
        return (self.requests, self.gateway_requests)

    def public(self) -> list[str]:
        return [
            self.requests,
            self.enterprises,
            self.risk,
            self.decisions,
            self.scans,
            self.status,
            self.deadletter,
            self.keys,
            self.gateway_requests,
        ]


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """Where an input record was read: its topic, partition and offset, and its record time."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Out:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


def cloudevent_headers(ce_id: str, ce_type: str, source: str, time: str) -> tuple[tuple[str, bytes], ...]:
    return (
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_time", time.encode()),
        ("content-type", b"application/json"),
    )


# In the dead letter of a request older than anything held (Pipeline._stale): the replay finds them by it.
STALE_REQUEST = "more than the pass retention"


def clock_command(at: datetime) -> bytes:
    """A tick of the channel's clock (on the internal pass topic, to one partition): `at` is now."""
    return encode(ClockTick(format_time(at)))


class ReferenceBehind(LookupError):
    """This worker's books know less of a reference topic than the partition it decides on has
    applied (it took the partition over from a worker that had read further). The worker reads the
    reference topics again and tries once more: nothing was written."""

    def __init__(self, partition: int, topic: str) -> None:
        super().__init__(f"partition {partition} has applied more of the {topic} topic than this worker has read")
        self.partition, self.topic = partition, topic


def decision_time(claimed: datetime | None, now: datetime | None, meta: RecordMeta) -> datetime:
    """When a request is judged: the firm's `submitted_at` (`claimed`) bounded by the channel's
    time `now`. A firm may state an earlier time, which only lengthens the window its decision
    looks at (`models.decide`), never a later one. Without `now` (a caller of the core with no
    clock: tests, a replay of a request with no recorded decision) the claim stands; without a
    valid claim, the record's time."""
    if claimed is None:
        return now if now is not None else record_time(meta.timestamp_ms)
    return claimed if now is None or claimed <= now else now


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Tables:
    """The worker's state, per partition: Faust tables in the worker, dicts in tests and replay.
    Values are stored typed (`models.stored`, MessagePack; JSON from a worker before 0.5), read and
    written through `streams.state.WorkingState`."""

    decided: MutableMapping[str, bytes]  # shipment id -> Decided: its fields and the decision published
    serials: MutableMapping[str, bytes]  # pass number -> shipment id holding it
    passes: MutableMapping[str, bytes]  # pass number -> PassState
    answers: MutableMapping[str, bytes]  # "pass_id/scan_id" -> Answer: the status event that answered the scan
    clocks: MutableMapping[str, bytes] = field(default_factory=dict)  # partition -> the clock's last tick
    # partition -> how far each reference topic's broadcasts have been applied there (a decision's
    # `known` shape): a worker that takes the partition over must know at least that before it
    # decides there (`ReferenceBehind`), or a change the partition has passed would never visit
    # the passes it decides.
    applied: MutableMapping[str, bytes] = field(default_factory=dict)
    # Derived, never stored: per partition, its active passes by region and firm (PassIndex) and
    # when its entries expire and leave (Lifetimes), each built from the tables on first use and
    # kept up to date by every write (`streams.state.WorkingState`).
    indexes: dict[int, PassIndex] = field(default_factory=dict)
    lifetimes: dict[int, Lifetimes] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Tables:
        return cls({}, {}, {}, {})

    def forget(self, partitions) -> None:
        """Drop the derived state of partitions that moved (their tables are recovered anew on return)."""
        for p in partitions:
            self.indexes.pop(p, None)
            self.lifetimes.pop(p, None)


class PassHolders(MutableMapping):
    """`Tables.serials` read from the pass table: pass number -> the shipment holding it.

    The worker's pass state names its shipment, and is written in the same event as the
    allocation, so a table of its own would only double the changelog writes of an approval.
    Writes are therefore no-ops: the pass state written beside them records the holder."""

    def __init__(self, passes: MutableMapping[str, bytes]) -> None:
        self._passes = passes

    def __getitem__(self, pass_id: str) -> bytes:
        holder = self.get(pass_id)
        if holder is None:
            raise KeyError(pass_id)
        return holder

    def get(self, pass_id: str, default=None):
        raw = self._passes.get(pass_id)
        return default if raw is None else load_holder(raw).encode()

    def __setitem__(self, pass_id: str, shipment_id: bytes) -> None:
        pass

    def __delitem__(self, pass_id: str) -> None:
        raise TypeError("a pass number is released with its pass")

    def __iter__(self):
        return iter(self._passes)

    def __len__(self) -> int:
        return len(self._passes)


class Pipeline:
    """The worker's handlers: each input record, or command on the internal pass topic, in; the records
    it makes out (`Out`), with the state in `Tables`."""

    def __init__(
        self,
        decider: Decider,
        tracker: Tracker,
        topics: Topics,
        *,
        partitions: int,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.decider = decider
        self.tracker = tracker
        self.topics = topics
        self.partitions = partitions
        self.retention = retention  # how long a pass stays in the working state after its validity
        self.state = WorkingState(tracker.regions_of, retention, partitions)
        self.board = CheckpointBoard(target_seconds=tracker.dwell_target)
        # Keys whose withdrawal has been applied here (their passes reissued): a pass signed later
        # by one of them is reissued at once (`Tracker.reissued`). Not the ring's withdrawals: a
        # replay knows all of those before it decides anything, and applies each in event-time order.
        self.withdrawals_applied: set[str] = set()
        self.meter = Meter()  # the worker sets a PrometheusMeter (streams.metrics)
        self._known_deciders: dict[bytes, Decider] = {}
        # Per partition, the `applied` bytes last read and their vectors decoded: every request reads
        # them, and they change only when a broadcast is applied (`_note_applied`).
        self._applied_read: dict[int, tuple[bytes, Applied]] = {}

    # --- dead letters -------------------------------------------------------------------------
    def dead_letter(self, meta: RecordMeta, key: bytes | None, value: bytes | None, error: str) -> Out:
        """The input record `meta` names, kept on the dead-letter topic with the reason it was not handled."""
        topic, partition, offset = meta.topic, meta.partition, meta.offset
        self.meter.dead_letter(topic)
        body = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": _text(key),
            "error": error,
            "at": format_time(record_time(meta.timestamp_ms)),
        }
        try:
            body["value"] = value.decode("utf-8") if value is not None else None
        except UnicodeDecodeError:
            body["value"], body["value_base64"] = None, base64.b64encode(value).decode()
        ce_id = f"deadletter/{topic}/{partition}/{offset}"
        return Out(
            self.topics.deadletter,
            key or b"",
            canonical(body),
            cloudevent_headers(ce_id, "cn.greenchannel.deadletter", "/greenchannel/worker", body["at"]),
        )

    # --- shipment requests ----------------------------------------------------------------------
    def on_request(
        self,
        key: bytes | None,
        value: bytes | None,
        meta: RecordMeta,
        *,
        tables: Tables,
        now: datetime | None = None,
        known: dict | None = None,
    ) -> list[Out]:
        """One decision (or one dead letter) per request; a repeat gets the first answer again.

        `now` is the channel's time as the worker decides (its clock, never a field a firm wrote):
        the decision time is the firm's `submitted_at` when that is earlier, else `now`
        (`decision_time`). `known` (a replay's): decide with only the reference data a recorded
        decision says it knew (`Decider.as_known`); by default, with all this worker knows.

        On approval the pass is issued from the same event: its state is stored and its `issued`
        status follows the decision. The pass number is allocated on the request's partition,
        which is the one Kafka's partitioner gives the pass number (`allocate_pass_id`), so the
        pass's state, scans and statuses all live there.
        """
        try:
            obj = load_object(value)
            request, errors = parse_request(obj, fallback_id=_text(key))
        except Unparseable as exc:
            return [self.dead_letter(meta, key, value, str(exc))]
        sid, partition = request.shipment_id, meta.partition
        if (refusal := origin_refusal(obj, sid, via_gateway=meta.topic == self.topics.gateway_requests)) is not None:
            return [self.dead_letter(meta, key, value, refusal)]
        earlier = self.state.decided(tables, sid)
        if earlier is not None:
            return [self._decision_out(sid, earlier.body, earlier.decided_at)]
        claimed = None if any(e.field == "submitted_at" for e in errors) else request.submitted_at
        decided_at = decision_time(claimed, now, meta)
        if (stale := self._stale(tables, partition, sid, decided_at)) is not None:
            return [self.dead_letter(meta, key, value, stale)]
        if known is None and (behind := self._behind(tables, partition)) is not None:
            raise ReferenceBehind(partition, behind)
        decider = self.decider if known is None else self._as_known(known)
        decision = decider.decide(
            request, errors, decided_at=decided_at, allocate=self._allocator(sid, partition, tables.serials)
        )
        if known is None and "missing_keys" in decision.message["known"]:  # loud: an operator must act
            log.error("request %s rejected: %s", sid, decision.message["reasons"][0]["text"])
        return self._file_decision(tables, partition, sid, decision)

    def _as_known(self, known: dict) -> Decider:
        """The decider that knew what `known` names (one kept per distinct `known`: a replay's
        decisions share a few)."""
        key = canonical(known)
        decider = self._known_deciders.get(key)
        if decider is None:
            if len(self._known_deciders) > 64:
                self._known_deciders.clear()
            decider = self._known_deciders[key] = self.decider.as_known(known)
        return decider

    def _books(self) -> dict:
        d = self.decider
        return {"enterprises": d.enterprises.provenance, "keys": d.keyring.provenance, "risk": d.risk.provenance}

    def _behind(self, tables: Tables, partition: int) -> str | None:
        """The reference topic (if any) of which `partition` has applied more than this worker's books."""
        raw = tables.applied.get(str(partition))
        if raw is None:
            return None
        read = self._applied_read.get(partition)
        if read is None or read[0] != raw:
            read = self._applied_read[partition] = (raw, load_applied(raw))
        books = self._books()
        return next((name for name, vector in read[1].items() if books[name].behind(vector)), None)

    def _note_applied(self, tables: Tables, partition: int, name: str, source) -> None:
        """`source` of reference topic `name` has been applied on `partition`."""
        if source is None:
            return
        applied = self.state.applied(tables, partition)
        vector = applied.setdefault(name, {})
        p, next_offset = source[0], source[1] + 1
        if vector.get(p, 0) < next_offset:
            vector[p] = next_offset
            self.state.put_applied(tables, partition, applied)

    def _file_decision(self, tables: Tables, partition: int, sid: str, decision: Decision) -> list[Out]:
        """Keep the decision and, on approval, store its pass: the decision and the pass's statuses out."""
        state, reissues = decision.state, []
        if state is not None:  # signed by a key withdrawn since: reissued at once (nothing is written before)
            state, reissues = self.tracker.reissued(state, self.withdrawals_applied)
        body, decided_at = canonical(decision.message), decision.message["decided_at"]
        self.meter.decision(decision.message["decision"], decision.message["priority"])
        issued = decision.state  # as issued: its key signed the decision's token
        pass_id, kid = (None, None) if issued is None else (issued.pass_id, issued.kid)
        filed = Decided(decided_at, pass_id, kid, body)
        self.state.put_decision(tables, partition, sid, filed)
        outs = [self._decision_out(sid, body, decided_at)]
        if state is not None:
            tables.serials[state.pass_id] = sid.encode()
            self.state.put_pass(tables, partition, state)
            outs.append(self._status_out(self.tracker.issued(state, decided_at)))
            outs += [self._status_out(event) for event in reissues]
        return outs

    def _stale(self, tables: Tables, partition: int, sid: str, decided_at: datetime) -> str | None:
        """Why a request not in `decided` is not decided: its decision, had one been made, would
        have left the working state by the partition's clock (see `Lifetimes`); None to decide it."""
        tick = tables.clocks.get(str(partition))
        if tick is None or epoch_seconds(decided_at) + self._retention_s >= epoch_seconds(tick.decode()):
            return None
        return (
            f"shipment {sid} was submitted at {format_time(decided_at)}, {STALE_REQUEST} "
            f"({self.retention.days} days) before the channel's clock ({tick.decode()}): a decision made for "
            f"it then has left the worker's state; it is on {self.topics.decisions} (key {sid}) and in the "
            f"database (the dashboard's search, greenchannel pass show)"
        )

    @property
    def _retention_s(self) -> int:
        return int(self.retention.total_seconds())

    def _allocator(self, sid: str, partition: int, serials: MutableMapping[str, bytes]):
        def holder(pass_id: str) -> str | None:
            owner = serials.get(pass_id)
            return None if owner is None else owner.decode()

        return lambda issuer: allocate_pass_id(
            issuer, sid, partition=partition, partitions=self.partitions, holder=holder
        )

    def _decision_out(self, sid: str, body: bytes, decided_at: str) -> Out:
        return Out(
            self.topics.decisions,
            sid.encode(),
            body,
            cloudevent_headers(f"decision/{sid}", "cn.greenchannel.pass.decision", "/greenchannel/decider", decided_at),
        )

    # --- checkpoint scans -----------------------------------------------------------------------
    def on_scan(
        self, key: bytes | None, value: bytes | None, meta: RecordMeta, *, tables: Tables, now: datetime | None = None
    ) -> list[Out]:
        """Apply a scan on its pass's partition; a scan that arrived elsewhere (keyed by something
        other than its pass number) is re-keyed there through the internal pass topic, with the
        channel's time `now` it arrived at. A scan dated too far from `now` is answered held
        (`models.passes.scan_time_refusal`); without `now` (a replay of a scan answered in time)
        its date is taken."""
        try:
            obj = load_object(value)
            scan = parse_scan(obj)
        except Unparseable as exc:
            return [self.dead_letter(meta, key, value, str(exc))]
        pass_id = scan.pass_id
        if pass_id is None:
            pass_id = claimed_pass_id(scan.token)
            if pass_id is None:
                return [self.dead_letter(meta, key, value, "token names no pass and the scan has no pass_id")]
        home = kafka_partition(pass_id.encode(), self.partitions)
        if home == meta.partition:
            return [self._apply_scan(tables, home, pass_id, scan, now)]
        received = None if now is None else format_time(now)
        rekeyed = encode(RekeyedScan(pass_id, scan, obj, received))
        return [Out(self.topics.pass_events, pass_id.encode(), rekeyed, partition=home)]  # no partitioner

    def _apply_scan(
        self, tables: Tables, partition: int, pass_id: str, scan: CheckpointScan, now: datetime | None = None
    ) -> Out:
        answer_key = f"{pass_id}/{scan.scan_id}"
        answered = self.state.answer(tables, answer_key)
        if answered is not None:  # redelivered: the first answer again
            return self._status_out_bytes(pass_id, answered, scan.scan_id)
        state = self.state.pass_state(tables, pass_id)
        if state is not None and (answered := self.state.answer(tables, answer_key)) is not None:
            return self._status_out_bytes(pass_id, answered, scan.scan_id)  # answered by a worker before 0.4
        new, event = self.tracker.scan(state, scan, pass_id, now)
        out = self._status_out(event)
        if new is not None:
            if new != state:
                self.state.put_pass(tables, partition, new)
            self.state.put_answer(tables, partition, answer_key, Answer(event["at"], out.value), new.valid_until)
        return out

    # --- reference data -------------------------------------------------------------------------
    def on_risk(self, key: bytes | None, value: bytes | None, meta: RecordMeta) -> list[Out]:
        """Apply a risk level and ask every tracker partition to re-evaluate its passes."""
        try:
            risk = parse_risk(
                load_object(value), timestamp_ms=meta.timestamp_ms, is_region=self.decider.gazetteer.names_region
            )
        except Unparseable as exc:
            return [self.dead_letter(meta, key, value, str(exc))]
        source = (meta.partition, meta.offset)
        self.decider.risk.apply(risk, source)
        return self._broadcast(risk.adcode, RiskChanged(risk, source))

    def on_enterprise(self, key: bytes | None, value: bytes | None, meta: RecordMeta) -> list[Out]:
        try:
            entry = parse_enterprise(load_object(value), timestamp_ms=meta.timestamp_ms)
        except Unparseable as exc:
            return [self.dead_letter(meta, key, value, str(exc))]
        source = (meta.partition, meta.offset)
        self.decider.enterprises.apply(entry, source)
        return self._broadcast(entry.credit_code, EnterpriseChanged(entry, source))

    def on_key(self, key: bytes | None, value: bytes | None, meta: RecordMeta) -> list[Out]:
        """A pass-signing key made active or withdrawn (`gc.pass.keys`): into the ring, and to every
        tracker partition, where each worker's ring learns it and a withdrawal reissues the passes
        that key signed. A record the pinned root did not sign, or that is not a genuine key of its
        kid, is dead-lettered with the reason."""
        try:
            entry = self.decider.keyring.take(load_object(value), timestamp_ms=meta.timestamp_ms)
        except Unparseable as exc:
            return [self.dead_letter(meta, key, value, str(exc))]
        source = (meta.partition, meta.offset)
        self.decider.keyring.apply(entry, source)
        return self._broadcast(entry.kid, KeyChanged(entry, source))

    def _broadcast(self, key: str, command: RiskChanged | EnterpriseChanged | KeyChanged) -> list[Out]:
        """A reference change to every partition of the internal pass topic."""
        value = encode(command)
        return [Out(self.topics.pass_events, key.encode(), value, partition=p) for p in range(self.partitions)]

    # --- the internal pass topic ------------------------------------------------------------------
    def on_pass_event(self, value: bytes, *, partition: int, tables: Tables, only=None) -> list[Out]:
        """A command on the internal pass topic (`streams.commands`), for the passes of `partition`,
        handled by its type. Bytes that hold no command raise (see `streams.commands.decode`).
        `only` (the audit replay's catch-up): a reference change applied to those passes alone, as
        it reached their partition after their decision, which had not known of it."""
        command = decode(value)
        if only is None:
            return self._COMMAND_HANDLERS[type(command)](self, tables, partition, command)
        if not isinstance(command, RiskChanged | EnterpriseChanged | KeyChanged):
            raise TypeError(f"{type(command).__name__} is not a reference change")
        return self._COMMAND_HANDLERS[type(command)](self, tables, partition, command, only=only)

    def _on_rekeyed_scan(self, tables: Tables, partition: int, command: RekeyedScan) -> list[Out]:
        """A scan sent here from the partition it arrived on, applied as `on_scan` would have."""
        now = None if command.received_at is None else parse_time(command.received_at)
        return [self._apply_scan(tables, partition, command.pass_id, command.scan, now)]

    def _on_risk_changed(self, tables: Tables, partition: int, command: RiskChanged, only=None) -> list[Out]:
        """The worker that consumed the risk topic applied it already; another worker's book learns it
        here, so re-evaluation never runs on a stale book. Visits the passes the region touches."""
        risk = command.risk
        self.decider.risk.apply(risk, command.source)
        self._note_applied(tables, partition, "risk", command.source)
        touched = self.index(partition, tables).touched_by_risk(self.decider.graph.prefectures_in(risk.adcode))
        return self._each_pass(tables, partition, touched, lambda s: self.tracker.risk_changed(s, risk), only)

    def _on_enterprise_changed(
        self, tables: Tables, partition: int, command: EnterpriseChanged, only=None
    ) -> list[Out]:
        """The key-list entry into this worker's book; the firm's passes on `partition` re-evaluated."""
        entry = command.entry
        self.decider.enterprises.apply(entry, command.source)
        self._note_applied(tables, partition, "enterprises", command.source)
        if entry.action != "remove":
            return []
        firms = self.index(partition, tables).of_firm(entry.credit_code)
        return self._each_pass(tables, partition, firms, lambda s: self.tracker.enterprise_changed(s, entry), only)

    def _on_key_changed(self, tables: Tables, partition: int, command: KeyChanged, only=None) -> list[Out]:
        """The ring learns the key (another worker consumed its record); a withdrawal visits the
        partition's active passes that key signed, and only those, and reissues them."""
        entry = command.entry
        self.decider.keyring.apply(entry, command.source)
        self._note_applied(tables, partition, "keys", command.source)
        if entry.status != WITHDRAWN:
            return []
        signed = self.index(partition, tables).signed_by(entry.kid)
        outs = self._each_pass(
            tables, partition, signed, lambda s: self.tracker.key_withdrawn(s, entry.kid, entry.effective_at), only
        )
        self.withdrawals_applied.add(entry.kid)
        return outs

    def withdrawals_in_the_past(self) -> None:
        """The live worker at start: every withdrawal on the ring it loaded has been applied (or its
        broadcast, still to come, changes nothing a reissue at once has not)."""
        ring = self.decider.keyring
        self.withdrawals_applied.update(kid for kid in ring.kids() if ring.withdrawn_at(kid) is not None)

    # --- the channel's clock: expiry and retention ------------------------------------------------
    def clock_tick(self, at: datetime, partition: int) -> Out:
        """The tick that moves `partition`'s clock to `at` (the worker sends one per partition it
        owns every GC_CLOCK_SECONDS): it goes through the log, so a replay moves its clock alike."""
        return Out(self.topics.pass_events, b"clock", clock_command(at), partition=partition)

    def _on_clock_tick(self, tables: Tables, partition: int, tick: ClockTick) -> list[Out]:
        """Expire the partition's passes whose validity ended before the tick, and take out of the
        working state what is `retention` past its end. A tick behind the clock changes nothing."""
        at = tick.at
        now = epoch_seconds(at)
        held = tables.clocks.get(str(partition))
        if held is not None and epoch_seconds(held.decode()) >= now:
            return []
        tables.clocks[str(partition)] = format_time(parse_time(at)).encode()
        lifetimes = self.lifetimes(partition, tables)
        outs = []
        for pass_id in lifetimes.expiring(now - 1):  # valid until the end of its validity: strictly before now
            state = self.state.pass_state(tables, pass_id)
            new, event = (None, None) if state is None else self.tracker.expired(state)
            if event is not None:
                self.state.put_pass(tables, partition, new)
                outs.append(self._status_out(event))
        for kind, key in lifetimes.leaving(now - 1):
            self.state.retire(tables, partition, kind, key)
        return outs

    def lifetimes(self, partition: int, tables: Tables) -> Lifetimes:
        """When `partition`'s entries expire and leave (`streams.state.WorkingState.lifetimes`)."""
        return self.state.lifetimes(tables, partition)

    def _on_legacy_issue(self, tables: Tables, partition: int, command: LegacyIssue) -> list[Out]:
        """Store and issue a pass a worker before 0.4 sent (see `streams.commands.LegacyIssue`), once."""
        state = command.state
        stored = tables.passes.get(state.pass_id)
        if stored is not None:
            if load_holder(stored) != state.shipment_id:
                return [self._collision(command)]
            return []  # redelivered: the pass exists already
        self.state.put_pass(tables, partition, self.state.with_kid(tables, state))
        return [self._status_out(self.tracker.issued(state, command.decided_at))]

    def _each_pass(self, tables: Tables, partition: int, pass_ids: list[str], change, only=None) -> list[Out]:
        """`change` each pass (of those in `only`, when given) (and reissue what it signed with a key
        withdrawn since: `Tracker.reissued`).
        Every change is worked out before any is stored, so a handler that raises (in an audit, a
        signing key missing there: SigningKeyMissing) leaves the partition as it was."""
        changed = []
        for pass_id in pass_ids if only is None else [p for p in pass_ids if p in only]:
            new, event = change(self.state.pass_state(tables, pass_id))
            if event is not None:
                new, reissues = self.tracker.reissued(new, self.withdrawals_applied)
                changed.append((new, [event, *reissues]))
        outs = []
        for new, events in changed:
            self.state.put_pass(tables, partition, new)
            outs += [self._status_out(event) for event in events]
        return outs

    # --- pass state and its index -------------------------------------------------------------------
    def index(self, partition: int, tables: Tables) -> PassIndex:
        """The index of `partition`'s active passes (`streams.state.WorkingState.index`)."""
        return self.state.index(tables, partition)

    def _collision(self, command: LegacyIssue) -> Out:
        """The dead letter of a legacy `issue` whose pass number another shipment holds."""
        state = command.state
        self.meter.dead_letter(self.topics.pass_events)
        body = canonical(
            {
                "topic": self.topics.pass_events,
                "key": state.pass_id,
                "value": command.command,
                "error": f"pass_id {state.pass_id} already belongs to another shipment",
                "at": command.decided_at,
            }
        )
        return Out(
            self.topics.deadletter,
            state.pass_id.encode(),
            body,
            cloudevent_headers(
                f"deadletter/collision/{state.shipment_id}",
                "cn.greenchannel.deadletter",
                "/greenchannel/tracker",
                command.decided_at,
            ),
        )

    def _status_out(self, event: dict) -> Out:
        self.board.observe(event)
        self.meter.status(event["status"])
        return self._status_out_of(event["pass_id"], canonical(event), event["cause"], event["at"])

    def _status_out_bytes(self, pass_id: str, answer: Answer, scan_id: str) -> Out:
        """A stored answer to scan `scan_id` again."""
        return self._status_out_of(pass_id, answer.body, f"scan:{scan_id}", answer.at)

    def _status_out_of(self, pass_id: str, body: bytes, cause: str, at: str) -> Out:
        return Out(
            self.topics.status,
            pass_id.encode(),
            body,
            cloudevent_headers(
                status_ce_id(pass_id, cause), "cn.greenchannel.pass.status", "/greenchannel/tracker", at
            ),
        )

    # Each command's handler, by the command's type (streams.commands), as a message bus dispatches.
    _COMMAND_HANDLERS: ClassVar[dict[type[Command], Callable[..., list[Out]]]] = {
        RekeyedScan: _on_rekeyed_scan,
        RiskChanged: _on_risk_changed,
        EnterpriseChanged: _on_enterprise_changed,
        KeyChanged: _on_key_changed,
        ClockTick: _on_clock_tick,
        LegacyIssue: _on_legacy_issue,
    }
