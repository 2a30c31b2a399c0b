"""The map's regions and the gazetteer's: which region's risk level each map region shows.

The dashboard draws Apache ECharts 4.9.0's `map/json/china-cities.json`, one feature per
prefecture-level region, its id a 6-digit adcode of about 2015. The gazetteer (cpca's table,
`routing.Gazetteer`) is newer. Where they disagree, the map region takes the level of the
gazetteer region that now covers it (`MAP_ALIASES`); every other map region is looked up by its
own code, by the rule risk levels follow everywhere (`RiskBook.level_at`: the highest level
declared for its province, its prefecture and itself):

- the four municipalities are drawn as one region each (110000, 120000, 310000, 500000): they
  show the level of their city-level code (110100 …), so a level set for 11 or 1101 shows;
- prefectures renamed since the map was drawn: 山南 542200 → 540500, 林芝 542600 → 540400,
  吐鲁番 652100 → 650400, 哈密 652200 → 650500; 儋州 469003 became a prefecture, 460400;
- county-level cities under a province (济源 419001, 仙桃 429004, 石河子 659001, Hainan's 4690xx …)
  are regions of the map and counties of the gazetteer: their own code, so their province's level
  and their own show;
- 北屯 659005 and 双河 659007 are not in the gazetteer: they show their province's level (65);
- 台湾 710000, 香港 810000, 澳门 820000 are drawn, never routed: their province-level code;
- 三沙 460300 has no region on the map (its islands are not drawn).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .records import LEVEL_RANK
from .reference import RiskBook

__all__ = ["MAP_ALIASES", "gazetteer_code", "feature_levels"]

MAP_ALIASES = {
    "110000": "110100",
    "120000": "120100",
    "310000": "310100",
    "500000": "500100",
    "542200": "540500",
    "542600": "540400",
    "652100": "650400",
    "652200": "650500",
    "469003": "460400",
}


def gazetteer_code(feature_id: str) -> str:
    """The gazetteer code whose level the map region `feature_id` shows."""
    return MAP_ALIASES.get(feature_id, feature_id)


def feature_levels(book: RiskBook, feature_ids: Iterable[str], at: datetime) -> dict[str, int]:
    """Each map region's risk rank at `at` (0 low, 1 medium, 2 high)."""
    return {f: LEVEL_RANK[book.level_at(gazetteer_code(f), at)] for f in feature_ids}
