"""Reference data as it was at any moment: region risk levels and the key-enterprise list.

Both are kept as time-ordered histories so a decision can be taken "as of" its event time:
the live worker and an audit replay then see the same levels for the same event, whatever
order the updates arrived in. Applying the same update twice changes nothing.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Iterable
from datetime import datetime

from .records import LEVEL_RANK, RISK_LEVELS, EnterpriseEntry, RegionRisk

__all__ = ["RiskBook", "EnterpriseBook"]

_HIGH = LEVEL_RANK["high"]


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

    def apply(self, risk: RegionRisk) -> bool:
        """Record an update; False when it was already known (a redelivery)."""
        entry = (risk.effective_at, LEVEL_RANK[risk.level])
        history = self._history.setdefault(risk.adcode, [])
        if entry in history:
            return False
        insort(history, entry)
        insort(self._changes, risk.effective_at)
        self._blocked_cache.clear()
        return True

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

    def apply(self, entry: EnterpriseEntry) -> bool:
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

    def listed_at(self, at: datetime) -> list[tuple[str, str]]:
        """(credit code, name) of every firm on the list at `at`, by code."""
        return [(code, self.names.get(code, "")) for code in sorted(self._history) if self.is_listed(code, at)]

    def __len__(self) -> int:
        return len(self._history)
