"""The audit (`greenchannel replay`): re-read the log, re-decide every request and prove every recorded decision.

An audit replay reads the input topics (requests, key enterprises, region risk, checkpoint
scans) between two positions, outside any consumer group so live workers are not disturbed,
and runs them through a fresh `Pipeline` from `build_pipeline(settings)`: the same code, the
same catalog and the same signing key as the live worker. Every re-decision is compared byte
for byte with the decision recorded on the decisions topic; the tracker's status events are
compared per pass.

Ordering (the design choice)
----------------------------
* The log says what the worker knew, and the replay proves each decision followed from it. Every
  decision records its time (`decided_at`: the channel's, or the firm's earlier claim) and what it
  knew (`known`: per reference topic and partition, the next offset applied to the worker's books).
  The replay reads ALL reference records up to `--until` (from the beginning of their topics, with
  their partitions and offsets), and decides each request again at its recorded time with the
  books rebuilt as exactly its `known` names (`Decider.as_known`), through the worker's own
  dispatch and guard (`streams.dispatch`). A decision an older worker recorded without `known` is
  decided as of its time with all reference data, and a difference is explained as
  `late_reference_data`.
* A reference change the walk below meets before a request whose decision did not know it (the
  worker read it late) reached the pass's partition after the decision live: it is applied to that
  pass right after the decision (`Replayer._decide_and_follow`).
* The inputs inside the window are merged in event-time order: requests by
  `submitted_at` (the record timestamp when that is invalid: the handler's own rule), risk and
  enterprise updates by `effective_at`, scans by `scanned_at`. Ties are broken by topic
  (enterprises, risk, requests, scans: an update effective at the very instant of a request is
  in force for it, as in `RiskBook.level_at`), then partition, then offset, so the order does
  not depend on how the partitions were interleaved when consumed.
* A repeated request (same shipment id) gets the first answer again, live and here; the first
  is the earliest in the log (record timestamp, partition, offset), which is the live worker's
  first for repeats on one partition (the usual case: requests are keyed by shipment id).
* Risk and enterprise updates inside the window also drive the tracker (re-evaluation of the
  passes issued so far): each of their per-partition broadcasts re-evaluates that partition's
  passes, as live; a pass's re-evaluation does not depend on the other passes.

Status comparison
-----------------
The live tracker applies commands in arrival (wall-clock) order, which a replay cannot know;
it sees them in event-time order. Status events are compared per pass as a mapping from cause
(`decision:…`, `scan:…`, `risk:…`, `enterprise:…`, carried in the CloudEvents id) to the event's
bytes: order is ignored and so are repeats (a redelivered scan is answered again with the same
bytes, live and here). A pass whose inputs arrived live in another order than their event
times (a scan received after a risk change but scanned before it, say) shows up as
`status_differs`; that is the method's limit, and a true finding when arrival order matters.
Passes in scope are those issued by a decision inside the window (plus, for a replay from the
beginning, every pass a scan named); recorded events of those passes are compared when the
replay produced the same cause or the event was recorded no later than `--until`.

Decisions recorded inside the window whose request lies before `--since` are re-decided from a
look-back over the requests topic; those with no request at all are orphans. Every mismatch
(`decision_differs`, `decision_missing`, `orphan_decision`, `status_differs`, `status_missing`,
`status_unexpected`) makes the command exit 1, so it can run as a scheduled job.

`--rebuild DATABASE_URL` rebuilds the database projections from the log into an empty database
with the same `models.store.db.project_*` functions and batch shape as the worker's projector.
`greenchannel pass history PASS_ID` tells one pass's story from the log, not the database.

One job per module: `reader` (positions, the log reader, the merge into event-time order),
`replayer`, `compare`, `explain`, `report` (JSON, Rich, HTML), `rebuild`, `history`, `run` (the
audit run); its commands are in `streams.cli.audit`. The formulas the worker and the audit must share
are in `streams.wire`.
"""

from __future__ import annotations

from .compare import Comparison, Mismatch, compare
from .history import pass_history
from .reader import Position, Record, parse_position
from .rebuild import RebuildRefused, rebuild_database
from .replayer import Replayer
from .run import run_replay

__all__ = [
    "Position",
    "parse_position",
    "Record",
    "Replayer",
    "compare",
    "Comparison",
    "Mismatch",
    "run_replay",
    "rebuild_database",
    "RebuildRefused",
    "pass_history",
]
