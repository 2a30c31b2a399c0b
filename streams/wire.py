"""Formulas the live path and the audit must compute alike: were one side to change alone, the
audit would report mismatches, or miss them, with no error.

The worker's handlers (`streams.handlers`) name their outputs with them and the audit
(`streams.audit`) reads the log with them. Pure: no Kafka, no state.
"""

from __future__ import annotations

import hashlib

from models.records import Unparseable, request_shipment_id

__all__ = ["status_ce_id", "request_sid"]


def status_ce_id(pass_id: str, cause: str) -> str:
    """A status event's CloudEvents id: its pass and a digest of its cause (`decision:…`, `scan:…`,
    `risk:…`), so an answer given again to the same cause is the same event."""
    digest = hashlib.sha1(cause.encode()).hexdigest()[:16]
    return f"status/{pass_id}/{digest}"


def request_sid(obj: dict | None, key: bytes | None) -> str | None:
    """The shipment id the worker answers a request with (`models.records.request_shipment_id`,
    which `parse_request` uses, the message key as fallback); None when it has none (dead-lettered)."""
    if obj is None:
        return None
    try:
        return request_shipment_id(obj, None if key is None else key.decode("utf-8", "replace"))
    except Unparseable:
        return None
