"""The worker's working state, typed: reads and writes of `Tables` by value (`models.stored`), and
what is derived from them.

Every write of a pass, a decision or a scan's answer goes through `WorkingState`, and so does each
update of what is derived from them: per partition, its active passes by region, firm and key
(`PassIndex`) and when its entries expire and leave (`Lifetimes`). Each is built from the tables on
first use after the partition was (re)assigned, then kept up to date by these writes, in the live
worker and in the audit's replay alike.
"""

from __future__ import annotations

from datetime import timedelta

from msgspec.structs import replace

from models.passes import ACTIVE, PassState, kafka_partition, legacy_answers
from models.stored import (
    Answer,
    Applied,
    Decided,
    dump,
    is_json,
    load_answer,
    load_applied,
    load_decided,
    load_decided_head,
    load_pass,
)
from models.tracking import Lifetimes, PassIndex

__all__ = ["WorkingState"]

_LONG_AGO = "1970-01-01T00:00:00Z"


class WorkingState:
    """Typed access to a worker's `Tables` (any of them: the caller passes them in), and the one
    place their derived index and lifetimes follow their writes."""

    def __init__(self, regions_of, retention: timedelta, partitions: int) -> None:
        self.regions_of = regions_of
        self.retention = retention
        self.partitions = partitions

    # --- reads ------------------------------------------------------------------------------------
    def decided(self, tables, sid: str) -> Decided | None:
        raw = tables.decided.get(sid)
        return None if raw is None else load_decided(raw)

    def pass_state(self, tables, pass_id: str) -> PassState | None:
        """A pass's state (with its key, `with_kid`); the scan answers a worker before 0.4 kept
        inside it move to the answer table."""
        raw = tables.passes.get(pass_id)
        if raw is None:
            return None
        if is_json(raw):
            for scan_id, answer in legacy_answers(raw).items():
                tables.answers.setdefault(f"{pass_id}/{scan_id}", answer)
        return self.with_kid(tables, load_pass(raw))

    def answer(self, tables, answer_key: str) -> Answer | None:
        raw = tables.answers.get(answer_key)
        return None if raw is None else load_answer(raw)

    def applied(self, tables, partition: int) -> Applied:
        raw = tables.applied.get(str(partition))
        return {} if raw is None else load_applied(raw)

    @staticmethod
    def with_kid(tables, state: PassState) -> PassState:
        """A state stored before the keyring names no key: its worker had one key, which signed
        every token of the pass, and its decision names it."""
        if state.kid is not None:
            return state
        raw = tables.decided.get(state.shipment_id)
        kid = None if raw is None else load_decided_head(raw).kid
        return state if kid is None else replace(state, kid=kid)

    # --- writes: the derived state follows ------------------------------------------------------
    def put_decision(self, tables, partition: int, sid: str, decided: Decided) -> None:
        """File a decision (before the pass it issued, if any: `put_pass` reads its time)."""
        tables.decided[sid] = dump(decided)
        lifetimes = tables.lifetimes.get(partition)
        if lifetimes is not None and decided.pass_id is None:
            lifetimes.add_decision(sid, decided.decided_at)

    def put_pass(self, tables, partition: int, state: PassState) -> None:
        lifetimes = tables.lifetimes.get(partition)
        if lifetimes is not None and state.pass_id not in tables.passes:
            lifetimes.add_pass(state.pass_id, state.valid_until, self._decided_at(tables, state))
        tables.passes[state.pass_id] = dump(state)
        index = tables.indexes.get(partition)
        if index is not None:
            index.put(state)

    def put_answer(self, tables, partition: int, answer_key: str, answer: Answer, valid_until: str) -> None:
        """Keep a scan's answer; it leaves with its pass (`valid_until`: the pass's)."""
        tables.answers[answer_key] = dump(answer)
        lifetimes = tables.lifetimes.get(partition)
        if lifetimes is not None:
            lifetimes.add_answer(answer_key, valid_until)

    def put_applied(self, tables, partition: int, applied: Applied) -> None:
        tables.applied[str(partition)] = dump(applied)

    def retire(self, tables, partition: int, kind: int, key: str) -> None:
        """Take an entry `Lifetimes` says is due out of the working state: a scan's answer, a
        decision without a pass, or a pass (ended: due only after its validity) with its decision."""
        if kind == Lifetimes.ANSWER:
            if tables.answers.get(key) is not None:
                del tables.answers[key]
        elif kind == Lifetimes.DECISION:
            raw = tables.decided.get(key)
            if raw is not None and load_decided_head(raw).pass_id is None:
                del tables.decided[key]
        else:
            raw = tables.passes.get(key)
            if raw is None:
                return
            state = load_pass(raw)
            if state.status in ACTIVE:  # cannot be: it expired at this tick or before
                raise ValueError(f"pass {key} is {state.status} and due to leave")
            del tables.passes[key]
            index = tables.indexes.get(partition)
            if index is not None:
                index.remove(key)
            tables.serials.pop(key, None)  # its number is free again (the worker's serials are the passes)
            if tables.decided.get(state.shipment_id) is not None:
                del tables.decided[state.shipment_id]

    def _decided_at(self, tables, state: PassState) -> str:
        """When a pass was decided, for when it may leave: its decision's time (a pass a worker
        before 0.4 issued may have none here: the end of its validity then)."""
        raw = tables.decided.get(state.shipment_id)
        return state.valid_until if raw is None else load_decided_head(raw).decided_at

    # --- derived, built on first use after a (re)assignment --------------------------------------
    def _ours(self, partition: int):
        return lambda key: kafka_partition(key.encode(), self.partitions) == partition

    def index(self, tables, partition: int) -> PassIndex:
        """The index of `partition`'s active passes."""
        index = tables.indexes.get(partition)
        if index is None:
            index = tables.indexes[partition] = PassIndex(self.regions_of)
            ours = self._ours(partition)
            for pass_id, raw in tables.passes.items():
                if ours(pass_id):
                    index.put(self.with_kid(tables, load_pass(raw)), pass_id)
        return index

    def lifetimes(self, tables, partition: int) -> Lifetimes:
        """When `partition`'s entries expire and leave."""
        lifetimes = tables.lifetimes.get(partition)
        if lifetimes is not None:
            return lifetimes
        lifetimes = tables.lifetimes[partition] = Lifetimes(self.retention)
        ours = self._ours(partition)
        ends = {}
        for pass_id, raw in tables.passes.items():
            if ours(pass_id):
                state = load_pass(raw)
                ends[pass_id] = state.valid_until
                lifetimes.add_pass(pass_id, state.valid_until, self._decided_at(tables, state))
        for answer_key in tables.answers:
            pass_id = answer_key.partition("/")[0]
            if ours(pass_id):  # an answer whose pass has left leaves at the next tick
                lifetimes.add_answer(answer_key, ends.get(pass_id, _LONG_AGO))
        for sid, raw in tables.decided.items():
            # A decision without a pass, filed on the partition Kafka's default partitioner gives its
            # shipment id (the key requests carry). See the README: Where a pass lives.
            if (head := load_decided_head(raw)).pass_id is None and ours(sid):
                lifetimes.add_decision(sid, head.decided_at)
        return lifetimes
