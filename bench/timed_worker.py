"""`greenchannel worker` that logs when it is given partitions and when its tables are recovered.

The worker logs warnings only, so nothing in its log says where a restart spends its time. Run
as `python -m bench.timed_worker`, it is the same worker (`streams.cli worker`) with two passive
marks, read back by `marks` (the state suite times a restarted worker with them):

    bench-mark rebalance <unix time>   Faust's tables are handed an assignment (stores open after it)
    bench-mark assigned <unix time>    Faust's recovery is handed an assignment (after group join)
    bench-mark recovered <unix time>   the tables are read back from their changelogs
    bench-tail <records> <partitions>  changelog records (offsets, markers too) recovery has to read,
                                       and the changelog partitions with any (RocksDB: only the tail)
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from pathlib import Path

__all__ = ["marks", "tails"]

MARK = re.compile(r"bench-mark (\w+) (\d+\.\d+)")
log = logging.getLogger("bench")


def _marked(method, name: str, *, after: bool):
    """`method` (a coroutine), logging the mark `name` as it is called or, `after`, once it returns."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        if not after:
            log.warning("bench-mark %s %.3f", name, time.time())
        result = await method(*args, **kwargs)
        if after:
            log.warning("bench-mark %s %.3f", name, time.time())
        return result

    return wrapper


def _tail_logged(seek_offsets):
    """Faust's `Recovery._seek_offsets`, logging first how much of the active changelogs is to be read."""

    @functools.wraps(seek_offsets)
    async def wrapper(self, consumer, tps, offsets, title):
        if title == "active":
            behind = {tp: self.active_highwaters.get(tp, -1) - max(offsets.get(tp, -1), -1) for tp in tps}
            behind = {tp: n for tp, n in behind.items() if n > 0}
            log.warning("bench-tail %d %d %s", sum(behind.values()), len(behind), sorted(map(str, behind))[:8])
        return await seek_offsets(self, consumer, tps, offsets, title)

    return wrapper


def tails(log_path: Path) -> list[tuple[int, int]]:
    """Each recovery's (records to read, changelog partitions with any), in order."""
    found = re.findall(r"bench-tail (\d+) (\d+)", log_path.read_text(errors="replace"))
    return [(int(n), int(p)) for n, p in found]


def marks(log_path: Path) -> dict[str, list[float]]:
    """Every mark in a worker's log, by name, in order (unix times)."""
    found: dict[str, list[float]] = {}
    for name, at in MARK.findall(log_path.read_text(errors="replace")):
        found.setdefault(name, []).append(float(at))
    return found


def main() -> int:
    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery

    from streams.cli import main as greenchannel

    TableManager.on_rebalance = _marked(TableManager.on_rebalance, "rebalance", after=False)
    Recovery.on_rebalance = _marked(Recovery.on_rebalance, "assigned", after=False)
    Recovery.on_recovery_completed = _marked(Recovery.on_recovery_completed, "recovered", after=True)
    Recovery._seek_offsets = _tail_logged(Recovery._seek_offsets)
    return greenchannel(["worker"])


if __name__ == "__main__":
    sys.exit(main())
