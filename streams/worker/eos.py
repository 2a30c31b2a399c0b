"""What the agents add to Faust's processing_guarantee="exactly_once" to make it hold.

Faust keeps one Kafka transaction per source partition and, from a timer task, commits in it
the offsets of the events acked so far together with everything produced in it so far. Three
things break "each input's outputs are committed exactly when its offset is":

* `Topic.send` picks the transaction of the *destination* partition, so an output re-keyed to
  another partition (a decision's pass events, a scan routed to its pass) commits apart from
  its input, or waits uncommitted until that partition sees traffic of its own;
* the timer's commit can run while an agent is between the sends of one event, committing
  those outputs without the event's offset (a restart then processes it again: a duplicate);
* table writes reach the transaction through the producer buffer, in the background, so they
  may be committed after the offset of the event that made them (a restart loses them).

So, in exactly_once mode, an agent handles each event (or each batch it takes) inside
`CommitGate.event()`: Faust's commit waits until no event is between its first write and its
ack, and the gate is left right before the ack (no await in between). Inside,
`streams.worker.compat.send_in_partition_transaction` hands the table writes the event just made,
then its outputs, to the transaction of the event's own partition, without awaiting their
delivery (one produce round trip per event was most of exactly_once's cost). Each commit then
(`streams.worker.compat.commit_transactions_concurrently`) waits until every record handed to its
transaction is delivered, a failed one failing the commit, and commits the transactions
concurrently. aiokafka's commit of a transaction also sends every batch handed to it before the
commit began; a record handed after that lands in the next transaction, which only an event in
flight could do, and the gate keeps those out of a commit. So each event's records commit
with its offset, in one transaction (tests/unit/test_compat.py holds the premises). Faust commits
every `GC_TRANSACTION_INTERVAL_MS` (100 ms): a read_committed reader sees an output then.

A worker taking over partitions with a backlog must also not fetch them before it has sought
them to their committed offsets; `streams.worker.compat.seek_before_resume` sees to that
(tests/faults/test_faults.py kills a worker mid-stream and counts the decisions).
"""

from __future__ import annotations

import asyncio

from .compat import wrap_commit

__all__ = ["CommitGate"]


class CommitGate:
    """Events in flight exclude Faust's offset commits (many events, or one commit, at a time)."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._commits = asyncio.Lock()
        self._consumer = None

    def install(self, consumer) -> None:
        """Make `consumer.commit` (every commit Faust makes goes through it) wait for the gate."""
        if self._consumer is consumer:
            return

        async def commit_between_events(commit, *args, **kwargs):
            async with self._commits:
                self._open.clear()  # no new event starts: the commit is not starved
                try:
                    await self._idle.wait()
                    return await commit(*args, **kwargs)
                finally:
                    self._open.set()

        wrap_commit(consumer, commit_between_events)
        self._consumer = consumer

    def event(self) -> _InFlight:
        return _InFlight(self)


class _InFlight:
    def __init__(self, gate: CommitGate) -> None:
        self.gate = gate

    async def __aenter__(self) -> None:
        gate = self.gate
        while not gate._open.is_set():
            await gate._open.wait()
        gate._busy += 1
        gate._idle.clear()

    async def __aexit__(self, *exc) -> None:
        # No await here: the caller acks the event right after, before a commit can run.
        gate = self.gate
        gate._busy -= 1
        if not gate._busy:
            gate._idle.set()
