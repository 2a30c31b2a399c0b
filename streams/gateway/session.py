"""The portal's sessions: a firm's browser trades its API key for a cookie, never keeping the key.

- `POST /v1/session` with the key opens a session: a random id (32 bytes) in an HttpOnly,
  SameSite=Strict cookie (Secure over https), kept here with the key id it stands for and its end.
  The key id is looked up in the database on every request, as a Bearer key is: a revoked key ends
  its sessions at once. Sessions live in this process (a restart signs everyone out; several gateway
  processes behind one address would each need the firm to sign in: not shared, say so).
- A request authenticated by the cookie that changes anything (not GET/HEAD/OPTIONS) must come from
  the portal itself (`csrf_refusal`): the header `X-GC-Portal: 1`, which a page of another origin cannot
  send without a CORS preflight the gateway never grants, and an `Origin` (when the browser sends
  one) of this very host. SameSite=Strict alone does not do: another port of the same host is the
  same *site*, and its pages would carry the cookie.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["COOKIE", "PORTAL_HEADER", "SESSION_SECONDS", "Sessions", "csrf_refusal"]

COOKIE = "gc_portal"
PORTAL_HEADER = "x-gc-portal"
SESSION_SECONDS = 8 * 3600  # a working day; then the firm signs in again
MAX_SESSIONS = 10_000  # past this, the oldest go first: a flood of sign-ins cannot grow memory
# A key's own sessions past this close its oldest: one firm signing in again and again ends its own
# sessions, never another firm's (it would take MAX_SESSIONS / MAX_PER_KEY keys, each one an operator's).
MAX_PER_KEY = 20
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class _Open:
    key_id: str
    until: float


@dataclass
class Sessions:
    """Open sessions: their id → the API key id they stand for, until when (monotonic seconds)."""

    clock: Callable[[], float] = time.monotonic
    seconds: float = SESSION_SECONDS
    _open: dict[str, _Open] = field(default_factory=dict)
    _of_key: dict[str, list[str]] = field(default_factory=dict)  # key id -> its sessions, oldest first

    def open(self, key_id: str) -> str:
        now = self.clock()
        mine = self._of_key.setdefault(key_id, [])
        while len(mine) >= MAX_PER_KEY:
            self._open.pop(mine.pop(0), None)
        if len(self._open) >= MAX_SESSIONS:
            self._sweep(now)
            while len(self._open) >= MAX_SESSIONS:
                self._drop(next(iter(self._open)))  # dicts keep order: the oldest
        sid = secrets.token_urlsafe(32)
        self._open[sid] = _Open(key_id, now + self.seconds)
        mine.append(sid)
        return sid

    def key_of(self, sid: str | None) -> str | None:
        """The key id of an open session, or None (unknown or past its end)."""
        found = self._open.get(sid) if sid else None
        if found is None:
            return None
        if found.until <= self.clock():
            self._drop(sid)  # type: ignore[arg-type]
            return None
        return found.key_id

    def close(self, sid: str | None) -> None:
        if sid and sid in self._open:
            self._drop(sid)

    def _drop(self, sid: str) -> None:
        key_id = self._open.pop(sid).key_id
        mine = self._of_key.get(key_id, [])
        mine.remove(sid)
        if not mine:
            self._of_key.pop(key_id, None)

    def _sweep(self, now: float) -> None:
        for sid in [s for s, o in self._open.items() if o.until <= now]:
            self._drop(sid)


def csrf_refusal(method: str, headers, host_origin: str) -> str | None:
    """Why a cookie-authenticated request may not change anything, or None when it may. `headers`:
    the request's (case-insensitive); `host_origin`: scheme://host[:port] this request was sent to."""
    if method.upper() in SAFE_METHODS:
        return None
    if headers.get(PORTAL_HEADER) != "1":
        return f"a change made with the portal's session must carry the header {PORTAL_HEADER}: 1"
    origin = headers.get("origin")
    if origin is not None and _origin(origin) != _origin(host_origin):
        return f"a change made with the portal's session must come from the portal ({origin} is another origin)"
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return "a change made with the portal's session must come from the portal itself"
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url.strip().lower())
    host = parts.hostname or ""
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, f"{host}:{port}"
