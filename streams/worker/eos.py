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
ack (the gate is left right before the ack, no await in between), then takes the offsets acked so
far. Inside, `streams.worker.compat.send_in_partition_transaction` hands the table writes the event
just made, then its outputs, to the transaction of the event's own partition, without awaiting
their delivery (one produce round trip per event was most of exactly_once's cost).

A commit does not stop the agents: once no event is in flight, the gate holds every transaction
(`streams.worker.compat.hold_transactions`) and lets events go on. Their records are kept, in
order, and handed to the transactions that follow once the commit has ended them
(`release_transactions`), so each event's records land in the transaction that will commit its
offset. A commit that ends a transaction without beginning the next (Faust's, when partitions are revoked
or the worker stops) drops what was kept for it: those events' offsets are not committed, so the
partition's next owner handles them again. Each transaction's commit
(`streams.worker.compat.commit_transactions_concurrently`) first waits until every record handed
to it is delivered, a failed one failing the commit (and every commit after it), and the
transactions commit concurrently. aiokafka's commit also sends every
batch handed to the transaction before it (tests/unit/test_compat.py holds the premises). Faust
commits every `GC_TRANSACTION_INTERVAL_MS` (100 ms): a read_committed reader sees an output then.

A worker taking over partitions with a backlog must also not fetch them before it has sought
them to their committed offsets; `streams.worker.compat.seek_before_resume` sees to that
(tests/faults/test_faults.py kills a worker mid-stream and counts the decisions).
"""

from __future__ import annotations

import asyncio

from .compat import hold_transactions, release_transactions, wrap_commit

__all__ = ["CommitGate"]


class CommitGate:
    """No event is in flight when Faust takes the offsets to commit; events go on while it commits,
    their records kept for the next transactions."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._commits = asyncio.Lock()
        self._consumer = None
        self._ended = False

    def install(self, consumer, producer) -> None:
        """Make `consumer.commit` (every commit Faust makes goes through it) wait for the gate, and
        hold `producer`'s transactions while it commits."""
        if self._consumer is consumer:
            return

        async def commit_between_events(commit, topics=None, start_new_transaction: bool = True):
            async with self._commits:
                if self._ended:  # its transactions are ended (a stop; a rebalance until the next assignment)
                    return False
                self._open.clear()  # no new event starts: the commit is not starved
                try:
                    await self._idle.wait()
                    hold_transactions(producer)  # raises if an earlier commit failed
                finally:
                    self._open.set()  # events go on; their records wait for the next transactions
                committed = await commit(topics, start_new_transaction=start_new_transaction)
                # (A failed commit raised: the holds stay, nothing commits again.) A transaction it
                # ended without beginning the next (a rebalance, a stop) drops what was kept for it.
                await release_transactions(producer)
                if not start_new_transaction:  # none is open until the next assignment begins them
                    self._ended = True
                return committed

        wrap_commit(consumer, commit_between_events)
        self._consumer = consumer

    async def on_partitions_assigned(self, *args, **kwargs) -> None:
        """Faust's assignment has begun the partitions' new transactions (before it sends this
        signal): commits go on in them."""
        self._ended = False

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
