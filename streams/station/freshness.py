"""How old the station's view is: of decisions, of status events and of keys.

A view is **fresh as of** the last moment the station's consumer had read its topic to the end:
every partition's position at the end the broker gave in its last fetch (the last stable offset,
reading committed). A record received is not enough (more may wait behind it), and an hour with
nothing new still counts as fresh as long as the broker keeps answering that nothing is new. The
moment is the fetch's own (the consumer's wall clock), so a station whose broker is gone, or whose
link hangs, ages; one restarted offline keeps the moment its store last noted.

Past its limit (STALE_AFTER) a view is stale, and every check says so beside its verdict: the
verdict stands (it is what the station knows), and the officer calls in to confirm, as users of the
EU DCC verifier apps asked of theirs. What a stale view risks:
- statuses (10 min): a pass revoked, suspended (a risk change) or rerouted since is shown GREEN.
  A risk change reaches a connected station within seconds; ten minutes is one queue at a border.
- decisions (10 min): the same log as the statuses, written by the same worker: stale together.
  A pass issued since is still checked on its signed claims, but with no status seen.
- keys (24 h): a key withdrawn since (a compromised one) still verifies; a key rotated in since
  is unknown, so its valid passes are refused. Keys change seldom (a rotation is announced ahead),
  so a day is the limit; a station online hears of them at once anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from models.records import format_time

__all__ = ["STALE_AFTER", "VIEWS", "freshness", "stale_warning", "age_text"]

STALE_AFTER = {"decisions": 600.0, "statuses": 600.0, "keys": 86_400.0}  # seconds; see the module's text
VIEWS = tuple(STALE_AFTER)
_NAMES = {"decisions": ("通行证", "decisions"), "statuses": ("状态", "statuses"), "keys": ("密钥", "keys")}


def freshness(
    fresh_as_of: Mapping[str, float | None], now: float, stale_after: Mapping[str, float] = STALE_AFTER
) -> dict:
    """Each view's age at `now` (seconds since the epoch) from when it was last fresh (None: never
    since this store began), and whether it is past its limit. A view never fresh is stale."""
    out = {}
    for view in VIEWS:
        at = fresh_as_of.get(view)
        age = None if at is None else max(0.0, now - at)
        out[view] = {
            "as_of": None if at is None else format_time(datetime.fromtimestamp(at, UTC)),
            "age_seconds": None if age is None else round(age, 1),
            "stale_after_seconds": stale_after[view],
            "stale": age is None or age > stale_after[view],
        }
    return out


def stale_warning(fresh: Mapping[str, dict]) -> dict | None:
    """What a check says beside its verdict when a view is stale (None when none is): the stale
    views, the oldest's age, and that the officer is to call in."""
    stale = [v for v in VIEWS if fresh[v]["stale"]]
    if not stale:
        return None
    zh_names = "、".join(_NAMES[v][0] for v in stale)
    en_names = ", ".join(_NAMES[v][1] for v in stale)
    ages = [fresh[v]["age_seconds"] for v in stale]
    if any(a is None for a in ages):
        return {
            "views": stale,
            "age_seconds": None,
            "text_zh": f"本站{zh_names}信息从未同步，请电话核实",
            "text_en": f"the station's view of {en_names} was never up to date: call in to confirm",
        }
    zh, en = age_text(max(ages))
    return {
        "views": stale,
        "age_seconds": max(ages),
        "text_zh": f"本站{zh_names}信息已{zh}未更新，请电话核实",
        "text_en": f"view of {en_names} is {en} old: call in to confirm",
    }


def age_text(seconds: float) -> tuple[str, str]:
    """An age as an officer reads it: seconds, minutes, hours or days (whole, rounded down)."""
    s = int(seconds)
    if s < 60:
        return f" {s} 秒", f"{s} s"
    if s < 2 * 3600:
        return f" {s // 60} 分钟", f"{s // 60} min"
    if s < 2 * 86_400:
        return f" {s // 3600} 小时", f"{s // 3600} h"
    return f" {s // 86_400} 天", f"{s // 86_400} days"
