"""What operators send: risk levels, key-list entries and signing-key withdrawals, validated before
anything is published.

Each entry is checked with the parser the worker applies to it (`models.records.parse_risk`,
`parse_enterprise`), so what passes here is what the worker accepts. The key-list CSV (UTF-8,
with or without the BOM Excel writes) is read row by row: each bad row is named by its line
number and why, the good ones are kept. No I/O: the commands in `streams.operators` publish.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .keyring import ACTIVE, WITHDRAWN, Keyring, key_entry
from .records import Unparseable, format_time, parse_enterprise, parse_risk

__all__ = [
    "EntryError",
    "CsvRows",
    "risk_entry",
    "enterprise_entry",
    "key_withdrawal",
    "read_enterprise_csv",
    "enterprise_csv",
    "CSV_FIELDS",
]

CSV_FIELDS = ("credit_code", "name")


class EntryError(ValueError):
    """An entry the worker would refuse: nothing is published."""


def risk_entry(
    adcode: str, level: str, *, at: datetime, is_region: Callable[[str], bool], note: str | None = None
) -> dict:
    """The RegionRisk message for `adcode` (2, 4 or 6 digits of a region of the gazetteer)."""
    entry = {"adcode": adcode.strip(), "level": level.strip().lower(), "effective_at": format_time(at)}
    if note:
        entry["note"] = note
    try:
        parse_risk(entry, is_region=is_region)
    except Unparseable as exc:
        raise EntryError(str(exc)) from None
    return entry


def enterprise_entry(credit_code: str, name: str, action: str, *, at: datetime) -> dict:
    """The EnterpriseEntry message adding or removing `credit_code` (GB 32100 check character)."""
    entry = {
        "credit_code": credit_code.strip().upper(),
        "name": name.strip(),
        "action": action,
        "effective_at": format_time(at),
    }
    if action == "add" and not entry["name"]:
        raise EntryError("name must not be empty")
    try:
        parse_enterprise(entry)
    except Unparseable as exc:
        raise EntryError(str(exc)) from None
    return entry


def key_withdrawal(ring: Keyring, kid: str, *, at: datetime, root: Ed25519PrivateKey) -> dict:
    """The PassKey record withdrawing `kid` from `at`, signed by `root`: a key on the ring, not withdrawn already, and
    another key in force then to reissue its passes with (else: `greenchannel keys rotate` first)."""
    kid = kid.strip()
    if kid not in ring:
        raise EntryError(f"no key {kid} on the ring (greenchannel keys list)")
    since = ring.withdrawn_at(kid)
    if since is not None and since <= at:
        raise EntryError(f"key {kid} is withdrawn already, since {format_time(since)}")
    if not any(other != kid and ring.status_at(other, at) == ACTIVE for other in ring.kids()):
        raise EntryError(
            f"no other key is in force at {format_time(at)}: the passes {kid} signed could not be "
            "reissued, only suspended. Run greenchannel keys rotate first"
        )
    return key_entry(ring.public_keys[kid], WITHDRAWN, at=at, root=root)


@dataclass(slots=True)
class CsvRows:
    good: list[tuple[int, dict]] = field(default_factory=list)  # (line, entry)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, why)


def read_enterprise_csv(text: str, *, at: datetime) -> CsvRows:
    """Key-list additions from CSV text with a header naming at least credit_code and name.
    A row is bad when its code fails GB 32100, its name is empty, or its code came before
    (the first row stands). Raises EntryError when the header lacks a column."""
    text = text.removeprefix("\ufeff")  # Excel's UTF-8 BOM
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in reader.fieldnames or ()]
    missing = [f for f in CSV_FIELDS if f not in header]
    if missing:
        raise EntryError(f"line 1: the header must name {', '.join(CSV_FIELDS)} (missing {', '.join(missing)})")
    reader.fieldnames = header
    rows = CsvRows()
    first_line: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not any((v or "").strip() for k, v in record.items() if k is not None):
            continue  # a blank line
        try:
            entry = enterprise_entry(record.get("credit_code") or "", record.get("name") or "", "add", at=at)
        except EntryError as exc:
            rows.bad.append((line, str(exc)))
            continue
        code = entry["credit_code"]
        if code in first_line:
            rows.bad.append((line, f"credit_code {code} repeats line {first_line[code]}"))
            continue
        first_line[code] = line
        rows.good.append((line, entry))
    return rows


def enterprise_csv(listed: Iterable[tuple[str, str]]) -> str:
    """(credit code, name) pairs as the CSV `read_enterprise_csv` reads."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(listed)
    return out.getvalue()
