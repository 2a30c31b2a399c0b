"""The replayer: log records through a fresh `Pipeline`, the way the worker's agents handle them."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import ChainMap, Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from .reader import Event, Record, decode, merge

if TYPE_CHECKING:  # the decision core is imported when a command runs, not when the CLI parses arguments
    from ..dispatch import Given
    from ..handlers import Out, Pipeline

__all__ = ["Replayer", "as_recorded", "received_times"]


def received_times(statuses: Iterable[Record]) -> dict[tuple[str, str], datetime]:
    """(pass id, cause) -> `received_at` of each recorded answer that has one (a scan held for its date)."""
    from models.records import parse_time

    out = {}
    for r in statuses:
        obj = decode(r.value) or {}
        if "received_at" not in obj:
            continue
        try:
            out[(str(obj.get("pass_id")), str(obj.get("cause")))] = parse_time(obj.get("received_at"))
        except (TypeError, ValueError):
            continue
    return out


def missing_keys(statuses: Iterable[Record]) -> frozenset[str]:
    """The kids the worker found without their private key when it had to sign a new token for a
    pass (the pass suspended, reason `no_signing_key: KID`): not a fact of the log, so read from its answers."""
    kids = set()
    for r in statuses:
        reason = (decode(r.value) or {}).get("reason")
        if isinstance(reason, str) and reason.startswith("no_signing_key: "):
            kids.add(reason.removeprefix("no_signing_key: "))
    return frozenset(kids)


def as_recorded(decisions: Iterable[Record]) -> dict[str, dict]:
    """Per shipment id, the first recorded decision's time and what it knew, as `Pipeline.on_request`
    takes them (`now`, `known`); a decision before `known` was recorded gives only its time."""
    from models.records import parse_time

    out: dict[str, dict] = {}
    for r in sorted(decisions, key=lambda r: r.log_position):
        obj = decode(r.value)
        sid = obj.get("shipment_id") if obj else None
        if not isinstance(sid, str) or sid in out:
            continue
        try:
            given: dict = {"now": parse_time(obj.get("decided_at"))}
        except (TypeError, ValueError):
            continue
        if isinstance(obj.get("known"), dict):
            given["known"] = obj["known"]
        out[sid] = given
    return out


class Replayer:
    """Runs log records through a Pipeline the way the worker's agents do, keeping what it produced."""

    def __init__(self, pipeline: Pipeline, *, advance: Callable[[int], None] | None = None) -> None:
        self.pipeline = pipeline
        self.topics = pipeline.topics
        self.advance = advance
        from .. import dispatch
        from ..handlers import Tables

        self._dispatch = dispatch  # the worker's own table of topic -> handler, and its guard
        self._table = dispatch.handlers(pipeline)
        self.tables = Tables.empty()  # the worker's tables, all partitions in one
        self.decided, self.serials, self.passes = self.tables.decided, self.tables.serials, self.tables.passes
        self.decisions: dict[str, bytes] = {}  # shipment id -> decision bytes, in event-time order
        self.request_of: dict[str, Record] = {}  # shipment id -> the request that was decided
        self.statuses: dict[str, dict[str, bytes]] = {}  # pass id -> CloudEvents id -> status bytes
        self.reference: list[Record] = []
        self.events = Counter()
        self.dead_letters = 0
        self.repeats = 0
        self.stale = 0  # requests the worker dead-lettered as older than the retention, the log bearing it out
        self.diagnoses = 50  # mismatched decisions re-decided with older reference data (costly: capped)
        self.as_recorded: dict[str, dict] = {}  # shipment id -> its recorded decision's time and knowledge
        self.received: dict[
            tuple[str, str], datetime
        ] = {}  # (pass id, cause) -> when a scan answered held for its date came
        # The reference records this walk has handled, per (topic, partition) by offset: (offset,
        # step of the walk, the broadcast's bytes).
        self.walked: dict[tuple[str, int], list[tuple[int, int, bytes]]] = {}
        t = self.topics
        self._short = {t.risk: "risk", t.enterprises: "enterprises", t.keys: "keys"}

    # Every input goes through the worker's own dispatch and guard (`streams.dispatch.handle`): an
    # unexpected error dead-letters it. A key the ring says signs, and whose private key is not in
    # GC_KEY_DIR, stops the replay (the worker waits for it): the audit cannot reproduce a signature
    # without it.
    def _handle(self, r: Record, given: Given) -> list[Out]:
        return self._dispatch.handle(self.pipeline, self._table, r.key, r.value, r.meta, given)

    def _given(self, tables=None, **kw) -> Given:
        """What the replay gives a handler: its tables, and what the log says the worker had."""
        return self._dispatch.Given(self.tables if tables is None else tables, **kw)

    def load_reference(self, records: Iterable[Record]) -> int:
        """Apply every reference record to the as-of books and the keyring (order does not matter;
        sorted anyway)."""
        t = self.topics
        n = 0
        for r in sorted(records, key=lambda r: (r.topic != t.enterprises, r.topic, r.partition, r.offset)):
            self._handle(r, self._given())
            self.reference.append(r)
            n += 1
        return n

    def replay(
        self,
        records: Iterable[Record],
        *,
        recorded: Iterable[Record] = (),
        answers: Iterable[Record] = (),
        held: Iterable[Record] = (),
        stale: set[tuple[int, int]] = frozenset(),
    ) -> int:
        """Handle the window's input records in event-time order; returns how many were handled.

        `recorded`: the decisions on the log. Each request is decided again at the time its recorded
        decision was taken and with what that decision says it knew (`as_recorded`): the log says
        what the worker knew, and the replay proves the decision followed from it.
        `answers`: the status events on the log; a scan answered held for its date says when the
        channel received it (`received_at`), and is replayed at that time.
        `held`: for a window, the decisions recorded before its end. The pass numbers their approvals
        hold, for shipments the window does not decide, were given by requests before it, so the
        window's allocation starts with them."""
        t = self.topics
        self.as_recorded = as_recorded(recorded)
        answers = list(answers)
        self.received = received_times(answers)
        # Strict from here: a key the worker signed with must be here; one whose private key it lacked
        # (a pass suspended `no_signing_key: KID`, its answer on the log) is missing here too.
        self.pipeline.decider.keyring.missing = missing_keys(answers)
        events = merge(records, t)
        self._hold_serials(held, except_for={e.sid for e in events if e.sid is not None})
        decide = self._decider([e for e in events if e.record.topic in t.request_topics], stale)
        step = 0
        for e in events:
            r = e.record
            self.events[r.topic] += 1
            step += 1
            if self.advance is not None and step % 1000 == 0:
                self.advance(1000)
            if r.topic in t.request_topics:
                outs = decide(e)
                if outs is None:
                    self.repeats += 1  # answered live with the first decision again: nothing new
                    continue
            elif r.topic == t.scans:
                outs = self._handle(r, self._given(now=self._received(r)))
            elif r.topic == t.pass_events:  # a clock tick, on the partition the worker handled it
                outs = self._handle(r, self._given())
            else:  # a risk/enterprise/key update: its broadcast re-evaluates each partition's passes
                outs = self._handle(r, self._given())
                if outs and outs[0].topic == t.pass_events:
                    insort(
                        self.walked.setdefault((self._short[r.topic], r.partition), []), (r.offset, step, outs[0].value)
                    )
            for out in outs:
                self._emit(out, r)
        if self.advance is not None and step % 1000:
            self.advance(step % 1000)
        return step

    def _decider(self, requests: list[Event], stale: set[tuple[int, int]]) -> Callable[[Event], list[Out] | None]:
        """`decide(event)`: the outputs of a request as the worker produced them (None for a repeat of a
        shipment id). The worker decides each partition in offset order, and pass numbers are allocated
        in that order (`models.passes.allocate_pass_id`), so a request is decided only after those before
        it on its partition; the ones decided ahead of the event-time walk wait in `ahead`, which stays as
        small as event time and offset order disagree. A decision depends only on the reference data as
        of the request's time, so deciding ahead changes no byte."""
        first: dict[str, tuple[int, int, int]] = {}
        queues: dict[int, list[Event]] = defaultdict(list)
        for e in requests:
            queues[e.record.partition].append(e)
            if e.sid is not None:
                pos = e.record.log_position
                if e.sid not in first or pos < first[e.sid]:
                    first[e.sid] = pos
        for queue in queues.values():
            queue.sort(key=lambda e: e.record.offset, reverse=True)  # popped from the end: lowest offset first
        ahead: dict[int, list[Out] | None] = {}

        def decide(event: Event) -> list[Out] | None:
            queue = queues[event.record.partition]
            while id(event) not in ahead:
                e = queue.pop()
                repeat = e.sid is not None and e.record.log_position != first[e.sid]
                if not repeat and (e.record.partition, e.record.offset) in stale:
                    self.stale += 1  # dead-lettered live, by the clock of its arrival (see stale_requests)
                    ahead[id(e)] = []
                    continue
                ahead[id(e)] = None if repeat else self._decide_and_follow(e.record, e.sid)
            return ahead.pop(id(event))

        return decide

    def _received(self, scan: Record):
        """When the channel received `scan`, if its recorded answer says (None: it was taken at its date)."""
        if not self.received:
            return None
        from models.passes import claimed_pass_id

        obj = decode(scan.value) or {}
        pass_id = obj.get("pass_id") or (claimed_pass_id(obj["token"]) if isinstance(obj.get("token"), str) else None)
        return self.received.get((str(pass_id), f"scan:{obj.get('scan_id')}"))

    def _decide_and_follow(self, request: Record, sid: str | None) -> list[Out]:
        """The request's outputs, then what the reference changes its decision did not know of, and
        which this walk has handled already, did to its pass. Live, each of those reached the
        pass's partition after the decision (the worker never decides knowing less than its
        partition has applied), and re-evaluated the pass there."""
        outs = self._decide(request, self.tables, sid)
        known = self.as_recorded.get(sid or "", {}).get("known")
        decided = next((o for o in outs if o.topic == self.topics.decisions), None)
        the_pass = (decode(decided.value) or {}).get("pass") if decided is not None else None
        if known is None or not isinstance(the_pass, dict):
            return outs
        from models.passes import kafka_partition

        pass_id = str(the_pass.get("pass_id"))
        partition = kafka_partition(pass_id.encode(), self.pipeline.partitions)
        missed = []
        for (name, p), walked in self.walked.items():
            missed += walked[bisect_left(walked, (known.get(name, {}).get(str(p), 0),)) :]
        given = self._given(only=(pass_id,))
        for _offset, _step, value in sorted(missed, key=lambda m: m[1]):  # in walk order
            broadcast = Record(self.topics.pass_events, partition, -1, request.timestamp_ms, None, value)
            outs += self._handle(broadcast, given)
        return outs

    def _decide(self, request: Record, tables, sid: str | None) -> list[Out]:
        """The outputs of `request` (shipment `sid`), decided at its recorded decision's time with what it knew."""
        return self._handle(request, self._given(tables, **self.as_recorded.get(sid or "", {})))

    def _hold_serials(self, decisions: Iterable[Record], *, except_for: set[str]) -> None:
        for r in decisions:
            obj = decode(r.value)
            the_pass = obj.get("pass") if obj else None
            sid = obj.get("shipment_id") if obj else None
            if isinstance(the_pass, dict) and isinstance(sid, str) and sid not in except_for:
                self.serials.setdefault(str(the_pass.get("pass_id")), sid.encode())

    def _emit(self, out: Out, r: Record) -> None:
        t = self.topics
        if out.topic == t.pass_events:
            from models.passes import kafka_partition

            partition = (
                out.partition if out.partition is not None else kafka_partition(out.key, self.pipeline.partitions)
            )
            internal = Record(t.pass_events, partition, -1, r.timestamp_ms, out.key, out.value)
            for o in self._handle(internal, self._given()):
                self._emit(o, r)
        elif out.topic == t.decisions:
            sid = out.key.decode()
            if sid not in self.decisions:
                self.decisions[sid] = out.value
                self.request_of[sid] = r
        elif out.topic == t.status:
            ce_id = dict(out.headers).get("ce_id", b"").decode()
            self.statuses.setdefault(out.key.decode(), {})[ce_id] = out.value
        else:
            self.dead_letters += 1

    # --- second opinions, for mismatches only -----------------------------------------------------
    def decide_again(self, request: Record) -> bytes | None:
        """The decision for one request with this replay's books, outside the replay's tables."""
        obj = decode(request.value)
        sid = obj.get("shipment_id") if obj else None
        outs = self._decide(request, self._scratch(), sid if isinstance(sid, str) else None)
        return next((o.value for o in outs if o.topic == self.topics.decisions), None)

    def _scratch(self):
        """Tables for a second opinion: this replay's pass numbers held, nothing of it changed."""
        from ..handlers import Tables

        return Tables({}, ChainMap({}, self.serials), {}, {})

    def decide_as_known_at(self, request: Record, timestamp_ms: int) -> bytes | None:
        """The decision with only the reference records the log held at `timestamp_ms`."""
        from ..bootstrap import with_fresh_reference

        other, handle = with_fresh_reference(self.pipeline), self._dispatch.handle
        table, scratch = self._dispatch.handlers(other), self._given(self._scratch())
        for r in self.reference:
            if r.timestamp_ms <= timestamp_ms:
                handle(other, table, r.key, r.value, r.meta, scratch)
        outs = handle(other, table, request.key, request.value, request.meta, scratch)
        return next((o.value for o in outs if o.topic == self.topics.decisions), None)
