"""Firms at the gateway: who they are, what they may ask for, and how their keys and ids work.

Pure rules, no database and no HTTP (streams.gateway is the adapter):
- A firm is registered by an operator with the credit codes it may act for: its own and the
  shippers it carries for. A request whose shipper is not one of them is refused (`not_acting_for`).
- A firm authenticates with an API key, `gck_<key id>_<secret>`. Only SHA-256 of the secret is kept:
  the secret is 32 random bytes, so a slow password hash would add nothing but cost per request.
- A firm's shipment ids are its own: the channel's id is `gw:<firm id>:<the firm's id>`. No other
  firm can name it, and the firms' Kafka route may not use the `gw:` namespace at all (the worker
  dead-letters such a request: `models.records.GATEWAY_PREFIX`).
- A rate limit per firm: a token bucket, its time given by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from .records import GATEWAY_PREFIX, MAX_ID

__all__ = [
    "FIRM_ID",
    "ApiKey",
    "NotAnApiKey",
    "TokenBucket",
    "channel_shipment_id",
    "client_shipment_id",
    "new_api_key",
    "parse_api_key",
    "secret_hash",
    "shipper_refusal",
    "split_channel_id",
    "max_client_id",
    "webhook_signature",
    "webhook_url_refusal",
]

# A firm's id: lower-case letters, digits and hyphens, as an operator types it (e.g. "sf-wuhan").
FIRM_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$")
_KEY = re.compile(r"^gck_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class NotAnApiKey(ValueError):
    """An API key that is not one: wrong shape (never looked up)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str  # public: names the key in lists and logs
    secret: str  # shown once, to the operator who made it

    @property
    def text(self) -> str:
        return f"gck_{self.key_id}_{self.secret}"


def new_api_key() -> ApiKey:
    return ApiKey(secrets.token_hex(6), secrets.token_urlsafe(32))


def parse_api_key(text: str) -> ApiKey:
    m = _KEY.match(text.strip())
    if m is None:
        raise NotAnApiKey("not a greenchannel API key (gck_<key id>_<secret>)")
    return ApiKey(m.group(1), m.group(2))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def channel_shipment_id(firm_id: str, client_id: str) -> str:
    """The channel's shipment id of a firm's own id: unique across firms by construction."""
    return f"{GATEWAY_PREFIX}{firm_id}:{client_id}"


def client_shipment_id(firm_id: str, channel_id: str) -> str | None:
    """The firm's own id of a channel id, or None when the id is not this firm's."""
    prefix = f"{GATEWAY_PREFIX}{firm_id}:"
    return channel_id[len(prefix) :] if channel_id.startswith(prefix) else None


def split_channel_id(channel_id: str) -> tuple[str, str] | None:
    """(firm id, the firm's own id) of a gateway shipment id, or None for any other id."""
    if not channel_id.startswith(GATEWAY_PREFIX):
        return None
    firm_id, sep, client_id = channel_id[len(GATEWAY_PREFIX) :].partition(":")
    return (firm_id, client_id) if sep and FIRM_ID.match(firm_id) and client_id else None


def max_client_id(firm_id: str) -> int:
    """How long a firm's own shipment id may be: the channel's id stays within MAX_ID."""
    return MAX_ID - len(channel_shipment_id(firm_id, ""))


def shipper_refusal(acts_for: frozenset[str], shipper_code: str) -> str | None:
    """Why the firm may not ask for this shipper's goods, or None when it may."""
    if shipper_code in acts_for:
        return None
    return (
        f"not_acting_for: this firm is not registered to act for shipper {shipper_code}; "
        "an operator adds the shippers a firm carries for (greenchannel firms acts-for)"
    )


def webhook_url_refusal(url: str) -> str | None:
    """Why the gateway will not POST to `url`, or None: https anywhere, plain http to loopback only
    (a development receiver)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return None
    return "a webhook is an https:// URL (plain http only to this machine's loopback)"


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`: the receiver recomputes it with
    the firm's webhook secret and refuses an old timestamp (a replayed delivery)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(slots=True)
class TokenBucket:
    """`rate` requests a second on average, bursts of up to `burst`."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> float:
        """0 when a request may go now (and counts it), else the seconds until one may."""
        wait = self.wait(now)
        if wait == 0.0:
            self.tokens -= 1
        return wait

    def wait(self, now: float) -> float:
        """0 when a request may go now, else the seconds until one may; counts nothing."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate
