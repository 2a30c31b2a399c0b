"""The policy catalog and the eligibility rules of the guidance.

The catalog (a versioned JSON file under `models/catalog/`) maps HS-code prefixes and
keywords to the four priority classes; `assess` applies the rules to one request. No I/O
besides loading the catalog file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .records import LEVEL_RANK, CargoItem, ShipmentRequest
from .reference import EnterpriseBook

__all__ = [
    "Catalog",
    "PriorityClass",
    "Reason",
    "Assessment",
    "assess",
    "load_catalog",
    "DEFAULT_CATALOG",
    "CLASS_NAMES",
]

DEFAULT_CATALOG = "catalog-2020.02-v1.json"

# The priority classes as a driver's pass and a checkpoint's page name them: (Chinese, English).
CLASS_NAMES = {
    "P0": ("医疗防护物资", "Medical supplies (§2)"),
    "P1": ("民生物资", "Livelihood goods (§5)"),
    "P2": ("重点产业", "Key industries (§6)"),
    "P3": ("重大项目", "Major projects (§7)"),
}


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str
    field: str | None = None

    def to_dict(self) -> dict:
        out = {"code": self.code, "text": self.text}
        if self.field:
            out["field"] = self.field
        return out


@dataclass(frozen=True, slots=True)
class PriorityClass:
    name: str  # P0..P3
    title: str
    needs_key_enterprise: bool
    hs_prefixes: dict[str, str]
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class Catalog:
    version: str
    classes: dict[str, PriorityClass]
    rules: dict
    _by_prefix: dict[str, tuple[str, str]] = field(repr=False, default_factory=dict)
    _keywords: tuple[tuple[str, str], ...] = field(repr=False, default=())

    @classmethod
    def from_dict(cls, data: dict) -> Catalog:
        classes = {
            name: PriorityClass(
                name,
                spec["title"],
                spec["needs_key_enterprise"],
                dict(spec["hs_prefixes"]),
                tuple(k.lower() for k in spec["keywords"]),
            )
            for name, spec in sorted(data["classes"].items())
        }
        by_prefix: dict[str, tuple[str, str]] = {}
        for name, cls_ in classes.items():
            for prefix, label in cls_.hs_prefixes.items():
                if prefix in by_prefix:
                    raise ValueError(f"HS prefix {prefix} is in both {by_prefix[prefix][0]} and {name}")
                by_prefix[prefix] = (name, label)
        # Longest keyword first: "食品包装" (P2 packaging) must win over "食品" (P1 food).
        keywords = tuple(
            sorted(((k, n) for n, c in classes.items() for k in c.keywords), key=lambda kn: (-len(kn[0]), kn[0], kn[1]))
        )
        return cls(data["version"], classes, data["rules"], by_prefix, keywords)

    def classify(self, item: CargoItem) -> tuple[str, str] | None:
        """(class, basis) for one cargo line: longest HS prefix first, then keywords."""
        for length in range(min(len(item.hs_code), 10), 1, -1):
            hit = self._by_prefix.get(item.hs_code[:length])
            if hit:
                return hit[0], f"HS {item.hs_code[:length]} {hit[1]}"
        description = item.description.lower()
        for keyword, name in self._keywords:
            if keyword in description:
                return name, f"keyword {keyword!r}"
        return None

    def validity_hours(self, trip: str, level: str) -> int:
        return int(self.rules["validity_hours"][trip][level])


@lru_cache(maxsize=8)
def load_catalog(name_or_path: str = DEFAULT_CATALOG) -> Catalog:
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        text = resources.files("models.catalog").joinpath(name_or_path).read_text(encoding="utf-8")
    return Catalog.from_dict(json.loads(text))


@dataclass(frozen=True, slots=True)
class Assessment:
    approved: bool
    priority: str | None
    reasons: tuple[Reason, ...]
    validity_hours: int = 0
    toll_exempt: bool = False


def assess(
    request: ShipmentRequest,
    *,
    catalog: Catalog,
    enterprises: EnterpriseBook,
    origin_level: str,
    destination_level: str,
    at: datetime,
    until: datetime | None = None,
) -> Assessment:
    """Apply the guidance to a well-formed request whose origin and destination are known, at `at`
    and through `until` (a key enterprise must stay listed throughout; the levels given are the
    highest of that window).

    A pass covers the whole vehicle, so its class is that of its least-priority cargo line:
    one box of masks cannot carry a truck of steel into a high-risk region.
    """
    classes, reasons = _classify_cargo(request, catalog)
    if len(classes) < len(request.cargo):
        return Assessment(False, None, tuple(r for r in reasons if r.code == "not_in_catalog"))
    priority = max(classes)

    if catalog.classes[priority].needs_key_enterprise:
        listed, reason = _key_enterprise(request, priority, enterprises, at, until or at)
        if not listed:
            return Assessment(False, priority, (reason,))
        reasons.append(reason)

    worst = max(origin_level, destination_level, key=LEVEL_RANK.__getitem__)
    refusal = _high_risk_refusal(priority, origin_level, worst, catalog)
    if refusal is not None:
        return Assessment(False, priority, (refusal,))
    note = _risk_level_note(priority, worst)
    if note is not None:
        reasons.append(note)

    toll_exempt = priority in catalog.rules["toll_exempt"]
    return Assessment(True, priority, tuple(reasons), catalog.validity_hours(request.trip, worst), toll_exempt)


def _classify_cargo(request: ShipmentRequest, catalog: Catalog) -> tuple[list[str], list[Reason]]:
    """The priority class of each cargo line the catalog covers, and one reason per line: its class
    and basis, or that it is outside the catalog."""
    reasons: list[Reason] = []
    classes: list[str] = []
    for i, item in enumerate(request.cargo):
        hit = catalog.classify(item)
        if hit is None:
            reasons.append(
                Reason(
                    "not_in_catalog",
                    f"cargo[{i}] HS {item.hs_code} ({item.description or 'no description'}) "
                    f"is outside every priority class of catalog {catalog.version}",
                    f"cargo[{i}].hs_code",
                )
            )
        else:
            classes.append(hit[0])
            reasons.append(
                Reason(f"class_{hit[0]}", f"cargo[{i}] {hit[1]}: {catalog.classes[hit[0]].title}", f"cargo[{i}]")
            )
    return classes, reasons


def _key_enterprise(
    request: ShipmentRequest, priority: str, enterprises: EnterpriseBook, at: datetime, until: datetime
) -> tuple[bool, Reason]:
    """Whether the shipper or, failing it, the consignee is on the key-enterprise list from `at`
    through `until`, and the reason: which one is (the consignee through the supply-chain link), or
    that neither is."""
    listed = [
        p for p in (request.shipper, request.consignee) if enterprises.listed_throughout(p.credit_code, at, until)
    ]
    if not listed:
        return False, Reason(
            "no_key_enterprise",
            f"{priority} goods need the shipper or the consignee on the key-enterprise list (§6, §9); "
            f"neither {request.shipper.credit_code} nor {request.consignee.credit_code} is listed",
        )
    role = "shipper" if listed[0] is request.shipper else "consignee"
    return True, Reason(
        "key_enterprise",
        f"{role} {listed[0].credit_code} is on the key-enterprise list"
        + (" (supply-chain link, §4)" if role == "consignee" else ""),
    )


def _high_risk_refusal(priority: str, origin_level: str, worst: str, catalog: Catalog) -> Reason | None:
    """Why `priority` goods may not move when the riskier end of the trip is at level `worst`: a
    high-risk region admits only some priority classes. None when they may."""
    if worst != "high":
        return None
    allowed = catalog.rules["high_risk_allows"]
    if priority in allowed:
        return None
    where = "origin" if origin_level == "high" else "destination"
    return Reason(
        "high_risk_region", f"{where} is a high-risk region: only {', '.join(allowed)} goods are approved (§10)"
    )


def _risk_level_note(priority: str, worst: str) -> Reason | None:
    """What the risk level `worst` of the trip's riskier end means for goods it admits: at high, that
    their class may move there; at medium, a shorter validity; None at low risk."""
    if worst == "high":
        return Reason("high_risk_region_allowed", f"{priority} goods may move to or from a high-risk region")
    if worst == "medium":
        return Reason("medium_risk_short_validity", "origin or destination is medium risk: shorter validity")
    return None
