"""The pass-signing keyring as it was at any moment: which key signs, which keys verify, which are withdrawn.

The ring is reference data with an as-of history, like the risk levels (`models.reference`): the
records of the keys topic say when each key became active and when it was withdrawn, and a pass
decided at time t is signed by the newest key active at t and not withdrawn by then. Which key
signs is therefore a function of the log, never of when a worker read a file, and the worker,
the replay and the checkpoint stations read the same records. Applying a record twice, or the
records in another order, gives the same ring: a key's activation and withdrawal are each the
earliest ever recorded for it.

No I/O: the private keys are reached through the lookup the edge gives (`streams.keys.KeyDir`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .passes import Signer
from .records import Unparseable, effective_time, format_time
from .reference import Provenance, Source, Vector

__all__ = [
    "ACTIVE",
    "WITHDRAWN",
    "KeyEntry",
    "Keyring",
    "SigningKeyMissing",
    "key_id",
    "public_pem",
    "parse_key_entry",
    "key_entry",
]

ACTIVE, WITHDRAWN = "active", "withdrawn"
_SINCE_EVER = datetime.min.replace(tzinfo=UTC)  # for ordering only: never on the wire


def key_id(public: Ed25519PublicKey) -> str:
    """A key's id, the `kid` its tokens name: the first 16 hex digits of SHA-256 of the raw key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class SigningKeyMissing(LookupError):
    """The ring says key `kid` signs at `at`, and its private key is not at hand here. Nothing may
    be signed with another key instead: the worker waits for it (`streams.app`)."""

    def __init__(self, kid: str, at: datetime) -> None:
        super().__init__(f"pass-signing key {kid} is in force at {format_time(at)}, but its private key is not here")
        self.kid, self.at = kid, at


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One record of the keys topic: key `kid` is `status` from `effective_at` (None: since ever,
    as the records a worker publishes for its first key say by having no time)."""

    kid: str
    public_key: Ed25519PublicKey
    status: str
    effective_at: datetime | None = None

    def to_record(self) -> dict:
        """The PassKey message (schemas/PassKey.schema.json); a since-ever activation has no time."""
        record = {
            "kid": self.kid,
            "algorithm": "Ed25519",
            "public_key": public_pem(self.public_key).decode(),
            "status": self.status,
        }
        if self.effective_at is not None:
            record["effective_at"] = format_time(self.effective_at)
        return record


def parse_key_entry(obj: dict[str, Any], *, timestamp_ms: int | None = None) -> KeyEntry:
    """A keys-topic record, checked: an Ed25519 public key in PEM whose id is `kid`, a known status.
    Without `effective_at`, an activation is since ever (the records workers publish for their
    first key) and a withdrawal takes effect from its record time (as other reference entries)."""
    kid, pem = obj.get("kid"), obj.get("public_key")
    if not isinstance(kid, str) or not isinstance(pem, str):
        raise Unparseable("a key record needs kid and public_key as strings")
    if obj.get("algorithm") != "Ed25519":
        raise Unparseable(f"algorithm must be Ed25519, not {obj.get('algorithm')!r}")
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise Unparseable(f"public_key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey) or key_id(key) != kid:
        raise Unparseable(f"kid {kid!r} is not the id of the Ed25519 key the record holds")
    status = obj.get("status", ACTIVE)
    if status not in (ACTIVE, WITHDRAWN):
        raise Unparseable(f"status must be active or withdrawn, not {status!r}")
    if obj.get("effective_at") is None and status == ACTIVE:
        return KeyEntry(kid, key, status)
    try:
        return KeyEntry(kid, key, status, effective_time(obj, timestamp_ms))
    except ValueError as exc:
        raise Unparseable(f"effective_at {exc}") from None


def key_entry(public: Ed25519PublicKey, status: str, *, at: datetime) -> dict:
    """The record `greenchannel keys rotate` / `withdraw` publishes, checked as the worker reads it."""
    record = KeyEntry(key_id(public), public, status, at).to_record()
    parse_key_entry(record)
    return record


class Keyring:
    """Every pass-signing key known, with when it became active and when it was withdrawn.

    `signers(kid)` finds the private key of `kid` (a `Signer`), None when it is not here; a ring
    that only verifies (a checkpoint station's) has none."""

    def __init__(self, signers: Callable[[str], Signer | None] = lambda kid: None) -> None:
        self.public_keys: dict[str, Ed25519PublicKey] = {}  # every key ever known, by kid: what verifies
        self._activated: dict[str, datetime] = {}
        self._withdrawn: dict[str, datetime] = {}
        self._signers = signers
        # Where each key record came from (models.reference.Provenance): what a decision knew of the ring.
        self.provenance: Provenance[tuple[str, Ed25519PublicKey, str, datetime | None]] = Provenance()

    @classmethod
    def single(cls, signer: Signer) -> Keyring:
        """The ring of one key, active since ever (what a fixed signer in the tests and bench is)."""
        ring = cls(lambda kid: signer if kid == signer.key_id else None)
        ring.add(signer.key_id, signer.public_key, ACTIVE)
        return ring

    @classmethod
    def of(cls, keys: Mapping[str, Ed25519PublicKey]) -> Keyring:
        """A verifying ring of `keys` by kid, each active since ever."""
        ring = cls()
        for kid, key in keys.items():
            ring.add(kid, key, ACTIVE)
        return ring

    def since_ever(self) -> Keyring:
        """This ring as it is before any timed record: its keys active since ever, the same private keys."""
        ring = Keyring(self._signers)
        for kid, activated in self._activated.items():
            if activated == _SINCE_EVER:
                ring.add(kid, self.public_keys[kid], ACTIVE)
        return ring

    def apply(self, entry: KeyEntry, source: Source | None = None) -> bool:
        """Record a keys-topic entry read at `source`; False when it changes nothing (a redelivery,
        a later repeat)."""
        return self.add(entry.kid, entry.public_key, entry.status, entry.effective_at, source=source)

    def as_known(self, vector: Vector) -> Keyring:
        """This ring as a reader knew it who had applied `vector` of the keys topic (the keys it
        was built with, which no record brought, included); the same private keys."""
        ring = Keyring(self._signers)
        for source, (kid, public, status, at) in self.provenance.within(vector):
            ring.add(kid, public, status, at, source=source)
        ring.provenance.known = dict(vector)
        return ring

    def add(
        self,
        kid: str,
        public: Ed25519PublicKey,
        status: str,
        at: datetime | None = None,
        *,
        source: Source | None = None,
    ) -> bool:
        self.provenance.note(source, (kid, public, status, at))
        known = kid in self.public_keys
        self.public_keys.setdefault(kid, public)
        book = self._activated if status == ACTIVE else self._withdrawn
        moment = _SINCE_EVER if at is None else at
        if kid in book and book[kid] <= moment:
            return not known
        book[kid] = moment
        return True

    def __contains__(self, kid: object) -> bool:
        return kid in self.public_keys

    def __len__(self) -> int:
        return len(self.public_keys)

    def withdrawn_at(self, kid: str) -> datetime | None:
        return self._withdrawn.get(kid)

    def withdrawn(self, kid: str, at: datetime) -> bool:
        """Is `kid` withdrawn at `at` (a token it signed is then refused, `key_withdrawn`)?"""
        withdrawn = self._withdrawn.get(kid)
        return withdrawn is not None and withdrawn <= at

    def activated_at(self, kid: str) -> datetime | None:
        """When `kid` became active: None when since ever, or never (`ever_active`)."""
        at = self._activated.get(kid)
        return None if at is None or at == _SINCE_EVER else at

    def ever_active(self, kid: str) -> bool:
        return kid in self._activated

    def status_at(self, kid: str, at: datetime) -> str:
        """withdrawn, active, or pending (known, not active yet)."""
        if self.withdrawn(kid, at):
            return WITHDRAWN
        activated = self._activated.get(kid)
        return ACTIVE if activated is not None and activated <= at else "pending"

    def signing_kid(self, at: datetime) -> str | None:
        """The key that signs at `at`: of the keys active then and not withdrawn, the one activated
        last (ties by kid); None when there is none."""
        best = None
        for kid, activated in self._activated.items():
            if activated <= at and not self.withdrawn(kid, at):
                best = max(best or (activated, kid), (activated, kid))
        return best and best[1]

    def signer_at(self, at: datetime) -> Signer | None:
        """The signer of the key that signs at `at`; None when no key is in force then.
        SigningKeyMissing when that key's private key is not here: never another key instead."""
        kid = self.signing_kid(at)
        if kid is None:
            return None
        signer = self._signers(kid)
        if signer is None:
            raise SigningKeyMissing(kid, at)
        return signer

    def has_private(self, kid: str) -> bool:
        return self._signers(kid) is not None

    def rows(self, at: datetime) -> list[dict]:
        """The ring as `greenchannel keys list` and the worker's `/keys/` view show it, at `at`:
        each key's activation ("always": since ever; None: never), withdrawal, status, whether it
        signs then and whether its private key is here."""
        signing = self.signing_kid(at)

        def since(kid: str) -> str | None:
            activated = self.activated_at(kid)
            return format_time(activated) if activated else "always" if self.ever_active(kid) else None

        return [
            {
                "kid": kid,
                "active_from": since(kid),
                "status": self.status_at(kid, at),
                "withdrawn_from": format_time(w) if (w := self.withdrawn_at(kid)) else None,
                "signs": kid == signing,
                "private_key_here": self.has_private(kid),
            }
            for kid in self.kids()
        ]

    def kids(self) -> list[str]:
        """Every kid, by activation (since ever first; pending last), then kid."""
        never = datetime.max.replace(tzinfo=UTC)
        return sorted(self.public_keys, key=lambda kid: (self._activated.get(kid, never), kid))
