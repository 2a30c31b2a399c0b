"""A firm's request as the gateway reads it, before the schema: JSON, an object, an id of its own."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import orjson

from models.firms import channel_shipment_id, max_client_id

__all__ = ["ClientRequest", "RequestRefused", "read_client_request", "CLIENT_ID"]

# A firm's own shipment id at the gateway: URL-safe characters only (it is a path segment).
CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]+$")
# Nesting a request never needs (it has 3 levels): deeper is refused before anything re-encodes it.
MAX_DEPTH = 32


class RequestRefused(ValueError):
    def __init__(self, status: int, error: str, message: str, fields: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.fields = status, error, message, fields or []


@dataclass(frozen=True, slots=True)
class ClientRequest:
    body: dict  # as the firm sent it
    client_id: str  # the firm's own shipment id
    channel_id: str  # the channel's: gw:<firm>:<client id>
    digest: str = field(default="")  # SHA-256 of the body's canonical JSON: the idempotency check


def read_client_request(raw: bytes, firm_id: str) -> ClientRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(400, "not_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestRefused(422, "invalid", "the body must be a JSON object (a ShipmentRequest)")
    if _depth(body) > MAX_DEPTH:
        raise RequestRefused(422, "too_deep", f"the request nests deeper than {MAX_DEPTH} levels")
    client_id = body.get("shipment_id")
    longest = max_client_id(firm_id)
    if not isinstance(client_id, str) or not CLIENT_ID.match(client_id) or len(client_id) > longest:
        message = f"1 to {longest} characters of A-Z a-z 0-9 . _ ~ - (your own id for the shipment)"
        raise RequestRefused(422, "invalid", "shipment_id is not valid", [{"field": "shipment_id", "message": message}])
    if "requested_by" in body:
        message = "set by the gateway from your API key; leave it out"
        raise RequestRefused(
            422, "invalid", "requested_by is not yours to set", [{"field": "requested_by", "message": message}]
        )
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return ClientRequest(body, client_id, channel_shipment_id(firm_id, client_id), digest)


def _depth(value) -> int:
    """How deep `value` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest
