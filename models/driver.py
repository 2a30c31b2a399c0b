"""The driver's pass on a phone: its capability link and what the page tells the driver.

Pure rules, no HTTP (streams.gateway.driver is the adapter):
- The link is `/d/<pass id>/<secret>`, the secret HMAC-SHA256 of the pass number under the gateway's
  driver-link key, cut to 128 bits and written base64url (22 characters). Stateless: nothing is kept
  per pass, a million passes cost nothing; whoever holds the link reads that one pass, no other.
  Rotating the key (a new key file) ends every link at once. A wrong secret and an unknown pass are
  the same answer to the caller.
- The verdict colours of Jiangsu's 2022 phone passes: green for a pass valid now, grey for any other
  (not yet valid, past its validity, suspended, revoked, held, delivered).
- What the driver must do, by status: go on, follow the new route, stop (and why), or not use the pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime

__all__ = [
    "KEY_BYTES",
    "SECRET_CHARS",
    "new_link_key",
    "link_secret",
    "link_secret_ok",
    "driver_path",
    "verdict",
    "instruction",
    "GREEN",
    "GREY",
]

KEY_BYTES = 32
SECRET_CHARS = 22  # 128 bits in base64url, unpadded
_CONTEXT = b"greenchannel driver link v1\x00"  # the key signs links only, whatever else it might meet
_SECRET = re.compile(r"^[A-Za-z0-9_-]{22}$")
GREEN, GREY = "green", "grey"
# Statuses in which the pass lets the vehicle go on (within its validity).
_GOING = frozenset({"issued", "at_checkpoint", "in_transit", "rerouted"})


def new_link_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def link_secret(key: bytes, pass_id: str) -> str:
    """The secret of a pass's link: base64url of the first 128 bits of HMAC-SHA256(key, pass id)."""
    if len(key) < 16:
        raise ValueError("a driver-link key is at least 16 bytes")
    digest = hmac.new(key, _CONTEXT + pass_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def link_secret_ok(key: bytes, pass_id: str, secret: str) -> bool:
    """Whether `secret` is the pass's, compared in constant time (a malformed one is simply wrong)."""
    if not _SECRET.match(secret):
        return False
    return hmac.compare_digest(link_secret(key, pass_id).encode(), secret.encode())


def driver_path(key: bytes, pass_id: str) -> str:
    """The page's path of a pass: `/d/<pass id>/<secret>`."""
    return f"/d/{pass_id}/{link_secret(key, pass_id)}"


def verdict(status: str | None, valid_from: datetime | None, valid_until: datetime | None, now: datetime) -> str:
    """GREEN when the pass lets the vehicle go on at `now` (the channel's time), else GREY."""
    if status not in _GOING or valid_until is None or now >= valid_until:
        return GREY
    return GREY if valid_from is not None and now < valid_from else GREEN


def instruction(status: str | None, valid_from: datetime | None, valid_until: datetime | None, now: datetime) -> str:
    """What the driver must do, as a code the page words in its language:
    go (follow the route), new_route (rerouted: follow the new one), stop (suspended: stop where it is
    safe and wait; the page says why), held (stopped at a checkpoint: follow the officer), done
    (delivered), not_yet (its validity has not begun: wait for it), not_valid (revoked, expired or
    past its validity: do not use it)."""
    if status in ("revoked", "expired") or (valid_until is not None and now >= valid_until and status in _GOING):
        return "not_valid"
    if status in _GOING and valid_from is not None and now < valid_from:
        return "not_yet"
    return {"rerouted": "new_route", "suspended": "stop", "held": "held", "delivered": "done"}.get(
        status or "", "go" if status in _GOING else "not_valid"
    )
