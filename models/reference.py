"""Reference data as it was at any moment: region risk levels and the key-enterprise list.

Both are kept as time-ordered histories so a decision can be taken "as of" its event time:
the live worker and an audit replay then see the same levels for the same event, whatever
order the updates arrived in. Applying the same update twice changes nothing.

A decision looks at a window of time, not an instant: from its decision time to the end of the
pass's validity (`level_during`, `blocked_during`, `listed_throughout`), so a change the channel
knows of that takes effect while the pass is valid counts as if it were in force already.

Each book also keeps where its entries came from (`Provenance`: the partition and offset of each
record on its reference topic), so that what a decision knew can be written in the decision
(`known`) and a replay can rebuild the book exactly as it was known then (`as_known`).
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Generic, TypeVar

from .records import LEVEL_RANK, RISK_LEVELS, EnterpriseEntry, RegionRisk

__all__ = ["RiskBook", "EnterpriseBook", "Provenance", "Source", "Vector"]

_HIGH = LEVEL_RANK["high"]

Source = tuple[int, int]  # where a reference record was read: (partition, offset) on its topic
Vector = Mapping[int, int]  # how far a topic was applied: partition -> the next offset
E = TypeVar("E")
B = TypeVar("B")


class Provenance(Generic[E]):
    """What a book was told and where each entry came from: per partition of its reference topic,
    the next offset applied (`known`), and every entry with its source, in the order applied.

    A topic's partition is applied in offset order (the worker's start-up read, its reference
    agent and each pass partition's broadcasts all deliver one partition's records in order), so
    `known` names a prefix of each partition. An entry without a source (a test's, a key the ring
    was built with) is known to every vector."""

    def __init__(self) -> None:
        self.known: dict[int, int] = {}
        self.entries: list[tuple[Source | None, E]] = []
        self._sources: set[Source] = set()

    def note(self, source: Source | None, entry: E) -> None:
        """Keep `entry` read at `source`; once per source (each worker hears of a record from its
        start-up read, its reference agent and every pass partition's broadcast)."""
        if source in self._sources:
            return
        self.entries.append((source, entry))
        if source is not None:
            self._sources.add(source)
            partition, offset = source
            if offset + 1 > self.known.get(partition, 0):
                self.known[partition] = offset + 1

    def within(self, vector: Vector) -> list[tuple[Source | None, E]]:
        """The entries a reader who had applied `vector` knew, in the order they were applied."""
        return [(s, e) for s, e in self.entries if s is None or s[1] < vector.get(s[0], 0)]

    def rebuild(self, book: B, vector: Vector) -> B:
        """`book` (empty) given the entries a reader who had applied `vector` knew, and that vector."""
        for source, entry in self.within(vector):
            book.apply(entry, source)  # type: ignore[attr-defined]
        book.provenance.known = dict(vector)  # type: ignore[attr-defined]
        return book

    def behind(self, vector: Vector) -> bool:
        """Whether `vector` names records this book has not applied."""
        return any(offset > self.known.get(partition, 0) for partition, offset in vector.items())


class RiskBook:
    """Risk levels per region prefix (2-digit province, 4-digit prefecture, 6-digit county).

    A county's level is the highest level in force for its province, its prefecture and
    itself: an area declared risky makes everything inside it at least that risky, so one
    rule holds without precedence tables. A region never declared is low risk.
    """

    def __init__(self) -> None:
        # prefix -> sorted [(effective_at, rank)]; the rank in the tuple makes a same-instant
        # conflict resolve to the higher level, independent of arrival order.
        self._history: dict[str, list[tuple[datetime, int]]] = {}
        self._changes: list[datetime] = []
        self._blocked_cache: dict[int, frozenset[str]] = {}
        self._during_cache: dict[tuple[int, int], frozenset[str]] = {}
        self.provenance: Provenance[RegionRisk] = Provenance()

    def apply(self, risk: RegionRisk, source: Source | None = None) -> bool:
        """Record an update; False when it was already known (a redelivery)."""
        self.provenance.note(source, risk)
        entry = (risk.effective_at, LEVEL_RANK[risk.level])
        history = self._history.setdefault(risk.adcode, [])
        if entry in history:
            return False
        insort(history, entry)
        insort(self._changes, risk.effective_at)
        self._blocked_cache.clear()
        self._during_cache.clear()
        return True

    def as_known(self, vector: Vector) -> RiskBook:
        """This book as a reader knew it who had applied `vector` of the risk topic."""
        return self.provenance.rebuild(RiskBook(), vector)

    def _moments(self, start: datetime, end: datetime) -> list[datetime]:
        """`start` and every change after it up to `end`: the instants at which the levels of
        [start, end] are all seen."""
        i, j = bisect_right(self._changes, start), bisect_right(self._changes, end)
        return [start, *dict.fromkeys(self._changes[i:j])]

    def level_during(self, adcode: str, start: datetime, end: datetime) -> str:
        """The highest level `adcode` has at any moment from `start` to `end`."""
        return max((self.level_at(adcode, t) for t in self._moments(start, end)), key=LEVEL_RANK.__getitem__)

    def blocked_during(
        self, start: datetime, end: datetime, nodes_of: Callable[[str], Iterable[str]]
    ) -> frozenset[str]:
        """Route-graph nodes high risk at any moment from `start` to `end` (cached per pair of
        intervals, the same object for every window between the same changes, as `blocked_at`)."""
        key = (bisect_right(self._changes, start), bisect_right(self._changes, end))
        blocked = self._during_cache.get(key)
        if blocked is None:
            moments = self._moments(start, end)
            blocked = self.blocked_at(start, nodes_of)
            if len(moments) > 1:
                blocked = frozenset().union(*(self.blocked_at(t, nodes_of) for t in moments))
            self._during_cache[key] = blocked
        return blocked

    def _rank_at(self, prefix: str, at: datetime) -> int:
        history = self._history.get(prefix)
        if not history:
            return 0
        i = bisect_right(history, (at, len(RISK_LEVELS)))
        return history[i - 1][1] if i else 0

    def level_at(self, adcode: str, at: datetime) -> str:
        rank = max(self._rank_at(adcode[:2], at), self._rank_at(adcode[:4], at), self._rank_at(adcode[:6], at))
        return RISK_LEVELS[rank]

    def high_prefixes_at(self, at: datetime) -> list[str]:
        return [prefix for prefix in self._history if self._rank_at(prefix, at) == _HIGH]

    def blocked_at(self, at: datetime, nodes_of: Callable[[str], Iterable[str]]) -> frozenset[str]:
        """Route-graph nodes that are high risk at `at` (cached per interval between changes).

        The same frozenset object is returned for every time inside one interval, so callers
        can use it as a cheap cache key.
        """
        segment = bisect_right(self._changes, at)
        blocked = self._blocked_cache.get(segment)
        if blocked is None:
            blocked = frozenset(node for prefix in self.high_prefixes_at(at) for node in nodes_of(prefix))
            self._blocked_cache[segment] = blocked
        return blocked

    def __len__(self) -> int:
        """How many updates it holds (a redelivery adds none)."""
        return len(self._changes)

    def snapshot(self, at: datetime) -> dict[str, str]:
        """Every declared prefix with its own level at `at` (for reports and the database)."""
        return {prefix: RISK_LEVELS[self._rank_at(prefix, at)] for prefix in sorted(self._history)}


class EnterpriseBook:
    """The key-enterprise list (重点企业名单) with its history of additions and removals."""

    def __init__(self) -> None:
        self._history: dict[str, list[tuple[datetime, int]]] = {}
        self.names: dict[str, str] = {}
        self.provenance: Provenance[EnterpriseEntry] = Provenance()

    def apply(self, entry: EnterpriseEntry, source: Source | None = None) -> bool:
        self.provenance.note(source, entry)
        item = (entry.effective_at, 1 if entry.action == "add" else 0)
        history = self._history.setdefault(entry.credit_code, [])
        if entry.name:
            self.names[entry.credit_code] = entry.name
        if item in history:
            return False
        insort(history, item)
        return True

    def is_listed(self, credit_code: str, at: datetime) -> bool:
        history = self._history.get(credit_code)
        if not history:
            return False
        # A removal and an addition at the same instant: the removal (0) sorts first, so the
        # addition stands; the later of the two is the one `bisect_right` lands after.
        i = bisect_right(history, (at, 2))
        return bool(i) and history[i - 1][1] == 1

    def listed_throughout(self, credit_code: str, start: datetime, end: datetime) -> bool:
        """Listed at `start` and at every change of its entry up to `end` (a removal the channel
        knows of, effective before `end`, counts from `start`)."""
        if not self.is_listed(credit_code, start):
            return False
        history = self._history.get(credit_code, [])
        i, j = bisect_right(history, (start, 2)), bisect_right(history, (end, 2))
        return all(self.is_listed(credit_code, at) for at, _ in history[i:j])

    def as_known(self, vector: Vector) -> EnterpriseBook:
        """This book as a reader knew it who had applied `vector` of the key-enterprise topic."""
        return self.provenance.rebuild(EnterpriseBook(), vector)

    def listed_at(self, at: datetime) -> list[tuple[str, str]]:
        """(credit code, name) of every firm on the list at `at`, by code."""
        return [(code, self.names.get(code, "")) for code in sorted(self._history) if self.is_listed(code, at)]

    def __len__(self) -> int:
        return len(self._history)
