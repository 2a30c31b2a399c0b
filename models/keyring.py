"""The pass-signing keyring as it was at any moment: which key signs, which keys verify, which are withdrawn.

The ring is reference data with an as-of history, like the risk levels (`models.reference`): the
records of the keys topic say when each key became active and when it was withdrawn, and a pass
decided at time t is signed by the newest key active at t and not withdrawn by then. Which key
signs is therefore a function of the log, never of when a worker read a file, and the worker,
the replay and the checkpoint stations read the same records. Applying a record twice, or the
records in another order, gives the same ring: a key's activation and withdrawal are each the
earliest ever recorded for it.

Root of trust. A record on the keys topic counts only when the operators' root key signed it
(`root_signature`, Ed25519 over `record_body`: every other field, canonical JSON); the worker
and the stations pin the root's public key (GC_ROOT_PUBLIC_KEY), and the root's private half never
touches the broker. Each active record grants its key a jurisdiction (`prefixes`: the adcode
prefixes of the pass numbers it may sign, a province "42", a city "4201", a county "420111") and
a validity (from `effective_at` to `not_after`). `key_refusal` says why a token of a key is not
taken at a time; `signing_kid` picks the newest key in force whose prefixes cover the issuer.

No I/O: the private keys are reached through the lookup the edge gives (`streams.keys.KeyDir`).
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .passes import Signer
from .records import Unparseable, canonical, effective_time, format_time, parse_time
from .reference import Provenance, Source, Vector

__all__ = [
    "ACTIVE",
    "WITHDRAWN",
    "NATIONAL",
    "Grant",
    "KeyEntry",
    "Keyring",
    "SigningKeyMissing",
    "key_id",
    "public_pem",
    "parse_key_entry",
    "key_entry",
    "record_body",
    "root_sign",
    "root_verify",
]

ACTIVE, WITHDRAWN = "active", "withdrawn"
_SINCE_EVER = datetime.min.replace(tzinfo=UTC)  # for ordering only: never on the wire
_NEVER = datetime.max.replace(tzinfo=UTC)
# The provinces (GB/T 2260, the adcode's first two digits): a national key lists them all, so what a
# key may sign is always spelled out in its record, never implied by an empty list.
NATIONAL = (
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42",
    "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82",
)  # fmt: skip


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
class Grant:
    """What an activation lets a key sign: pass numbers under `prefixes` (None: any, a key given
    directly by the edge, as a file or a test's signer), until `not_after` (None: no end)."""

    prefixes: tuple[str, ...] | None = None
    not_after: datetime | None = None

    def covers(self, pass_id: str) -> bool:
        return self.prefixes is None or any(pass_id.startswith(p) for p in self.prefixes)

    def order(self) -> tuple:
        """A total order on grants, so that two activations at the same moment resolve alike in every reader."""
        return (self.prefixes or (), self.not_after or _NEVER)


ANY = Grant()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One record of the keys topic: key `kid` is `status` from `effective_at` (None: since ever),
    with the grant of an activation, and the root's signature over the record."""

    kid: str
    public_key: Ed25519PublicKey
    status: str
    effective_at: datetime | None = None
    grant: Grant = ANY
    root_kid: str | None = None
    root_signature: str | None = None

    def to_record(self) -> dict:
        """The PassKey message (schemas/PassKey.schema.json); a since-ever activation has no time."""
        record: dict[str, Any] = {
            "kid": self.kid,
            "algorithm": "Ed25519",
            "public_key": public_pem(self.public_key).decode(),
            "status": self.status,
        }
        if self.effective_at is not None:
            record["effective_at"] = format_time(self.effective_at)
        if self.status == ACTIVE and self.grant.prefixes is not None:
            record["prefixes"] = list(self.grant.prefixes)
        if self.status == ACTIVE and self.grant.not_after is not None:
            record["not_after"] = format_time(self.grant.not_after)
        if self.root_kid is not None:
            record["root_kid"] = self.root_kid
        if self.root_signature is not None:
            record["root_signature"] = self.root_signature
        return record


def record_body(record: Mapping[str, Any]) -> bytes:
    """The bytes the root signs: the record without its `root_signature`, canonical JSON (the
    one home of that encoding; `root_kid` is inside, so a signature names its root)."""
    return canonical({k: v for k, v in record.items() if k != "root_signature"})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def root_sign(record: Mapping[str, Any], root: Ed25519PrivateKey) -> dict:
    """`record` signed by the root key `root` (what `greenchannel keys` and the development root do)."""
    signed = {k: v for k, v in record.items() if k not in ("root_signature", "root_kid")}
    signed["root_kid"] = key_id(root.public_key())
    signed["root_signature"] = _b64(root.sign(record_body(signed)))
    return signed


def root_verify(record: Mapping[str, Any], root: Ed25519PublicKey | None) -> None:
    """Unparseable unless `root` (the pinned root public key) signed `record`."""
    if root is None:
        raise Unparseable("no root public key is pinned (GC_ROOT_PUBLIC_KEY): no key record is taken")
    signature, root_kid = record.get("root_signature"), record.get("root_kid")
    if not isinstance(signature, str) or not isinstance(root_kid, str):
        raise Unparseable("the key record is not signed by a root key (no root_kid, root_signature)")
    if root_kid != key_id(root):
        raise Unparseable(f"the key record is signed by root {root_kid}, not by the pinned root {key_id(root)}")
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        root.verify(raw, record_body(record))
    except (ValueError, TypeError, InvalidSignature):  # TypeError: orjson's, for what JSON cannot hold
        raise Unparseable(f"the key record's root signature does not verify with root {root_kid}") from None


def parse_key_entry(
    obj: dict[str, Any], root: Ed25519PublicKey | None, *, timestamp_ms: int | None = None, verify: bool = True
) -> KeyEntry:
    """A keys-topic record, checked: signed by the pinned `root` (`root_verify`), an Ed25519 public
    key in PEM whose id is `kid`, a known status, an activation's prefixes and validity. Without
    `effective_at`, an activation is since ever (a worker's first key) and a withdrawal takes effect
    from its record time (as other reference entries). `verify=False` only for a record a worker
    checked already (the internal broadcast, `streams.commands.KeyChanged`)."""
    if verify:
        root_verify(obj, root)
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
    grant = _grant(obj) if status == ACTIVE else ANY
    signature = (obj.get("root_kid"), obj.get("root_signature"))
    if obj.get("effective_at") is None and status == ACTIVE:
        return KeyEntry(kid, key, status, None, grant, *signature)
    try:
        return KeyEntry(kid, key, status, effective_time(obj, timestamp_ms), grant, *signature)
    except ValueError as exc:
        raise Unparseable(f"effective_at {exc}") from None


def _grant(obj: Mapping[str, Any]) -> Grant:
    """An activation's jurisdiction (adcode prefixes of 2, 4 or 6 digits, at least one) and end."""
    prefixes = obj.get("prefixes")
    if not isinstance(prefixes, list) or not prefixes:
        raise Unparseable("an active key record needs prefixes: the adcode prefixes its key may issue")
    for p in prefixes:
        if not (isinstance(p, str) and p.isascii() and p.isdigit() and len(p) in (2, 4, 6)):
            raise Unparseable(f"prefix {p!r} is not an adcode prefix of 2, 4 or 6 digits")
    not_after = obj.get("not_after")
    if not_after is None:
        return Grant(tuple(sorted(set(prefixes))), None)
    try:
        end = parse_time(not_after)
    except (TypeError, ValueError) as exc:
        raise Unparseable(f"not_after {exc}") from None
    return Grant(tuple(sorted(set(prefixes))), end)


def key_entry(
    public: Ed25519PublicKey,
    status: str,
    *,
    at: datetime | None,
    root: Ed25519PrivateKey,
    prefixes: tuple[str, ...] | list[str] = NATIONAL,
    not_after: datetime | None = None,
) -> dict:
    """The root-signed record `greenchannel keys rotate` / `withdraw` publishes (`at` None: an
    activation since ever, a worker's first key), checked as the worker reads it."""
    grant = Grant(tuple(prefixes), not_after) if status == ACTIVE else ANY
    record = root_sign(KeyEntry(key_id(public), public, status, at, grant).to_record(), root)
    parse_key_entry(record, root.public_key())
    return record


class Keyring:
    """Every pass-signing key known, with when it became active (and its grant), and when it was withdrawn.

    `signers(kid)` finds the private key of `kid` (a `Signer`), None when it is not here; a ring
    that only verifies (a checkpoint station's) has none. `root` is the pinned root public key the
    keys topic's records must be signed by (None: none is taken). `may_lack`: which kids a decision
    may find without their private key and answer `no_signing_key` (the live worker: any; a replay:
    only those the recorded decision says were missing, `as_missing`)."""

    def __init__(
        self, signers: Callable[[str], Signer | None] = lambda kid: None, *, root: Ed25519PublicKey | None = None
    ) -> None:
        self.public_keys: dict[str, Ed25519PublicKey] = {}  # every key ever known, by kid: what verifies
        self._activated: dict[str, datetime] = {}
        self._grants: dict[str, Grant] = {}  # the grant of each key's earliest activation
        self._withdrawn: dict[str, datetime] = {}
        self._signers = signers
        self.root = root
        self.missing: frozenset[str] | None = None  # None: live; a set: a replay's recorded missing keys
        # Where each key record came from (models.reference.Provenance): what a decision knew of the ring.
        self.provenance: Provenance[KeyEntry] = Provenance()

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

    def _empty(self) -> Keyring:
        ring = Keyring(self._signers, root=self.root)
        ring.missing = self.missing
        return ring

    def since_ever(self) -> Keyring:
        """This ring as it is before any timed record: its keys active since ever, the same private keys."""
        ring = self._empty()
        for kid, activated in self._activated.items():
            if activated == _SINCE_EVER:
                ring.add(kid, self.public_keys[kid], ACTIVE, grant=self._grants[kid])
        return ring

    def take(self, record: dict[str, Any], *, timestamp_ms: int | None = None) -> KeyEntry:
        """A keys-topic record parsed and checked against this ring's root (Unparseable if it is not
        the root's), not applied."""
        return parse_key_entry(record, self.root, timestamp_ms=timestamp_ms)

    def apply(self, entry: KeyEntry, source: Source | None = None) -> bool:
        """Record a keys-topic entry read at `source`; False when it changes nothing (a redelivery,
        a later repeat)."""
        return self.add(entry.kid, entry.public_key, entry.status, entry.effective_at, grant=entry.grant, source=source)

    def as_known(self, vector: Vector) -> Keyring:
        """This ring as a reader knew it who had applied `vector` of the keys topic (the keys it
        was built with, which no record brought, included); the same private keys."""
        return self.provenance.rebuild(self._empty(), vector)

    def as_missing(self, kids: frozenset[str]) -> Keyring:
        """This ring as a replay uses it: the kids a recorded decision found without their private
        key are missing (whether or not the audit has them), and any other missing key is the
        audit's to be given (SigningKeyMissing goes up)."""
        ring = copy.copy(self)
        ring.missing = frozenset(kids)
        return ring

    def add(
        self,
        kid: str,
        public: Ed25519PublicKey,
        status: str,
        at: datetime | None = None,
        *,
        grant: Grant = ANY,
        source: Source | None = None,
    ) -> bool:
        self.provenance.note(source, KeyEntry(kid, public, status, at, grant))
        known = kid in self.public_keys
        self.public_keys.setdefault(kid, public)
        book = self._activated if status == ACTIVE else self._withdrawn
        moment = _SINCE_EVER if at is None else at
        if kid in book and (
            book[kid] < moment
            or book[kid] == moment
            and (status != ACTIVE or self._grants.get(kid, ANY).order() <= grant.order())
        ):
            return not known
        book[kid] = moment
        if status == ACTIVE:
            self._grants[kid] = grant
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

    def grant(self, kid: str) -> Grant | None:
        """What `kid`'s activation lets it sign; None when it was never activated."""
        return self._grants.get(kid)

    def key_refusal(self, kid: str, pass_id: object, at: datetime) -> str | None:
        """Why a genuine token of key `kid` for pass number `pass_id` is not taken at `at`; None
        when it is. `key_withdrawn`; `key_not_valid` (never activated, active only later, or past
        its `not_after`); `key_outside_jurisdiction` (the pass number is under none of its prefixes)."""
        if self.withdrawn(kid, at):
            return "key_withdrawn"
        grant, activated = self._grants.get(kid), self._activated.get(kid)
        if grant is None or activated is None or at < activated or (grant.not_after and at > grant.not_after):
            return "key_not_valid"
        if not (isinstance(pass_id, str) and grant.covers(pass_id)):
            return "key_outside_jurisdiction"
        return None

    def activated_at(self, kid: str) -> datetime | None:
        """When `kid` became active: None when since ever, or never (`ever_active`)."""
        at = self._activated.get(kid)
        return None if at is None or at == _SINCE_EVER else at

    def ever_active(self, kid: str) -> bool:
        return kid in self._activated

    def status_at(self, kid: str, at: datetime) -> str:
        """withdrawn, active, expired (past its not_after), or pending (known, not active yet)."""
        if self.withdrawn(kid, at):
            return WITHDRAWN
        activated, grant = self._activated.get(kid), self._grants.get(kid, ANY)
        if activated is None or activated > at:
            return "pending"
        return "expired" if grant.not_after and at > grant.not_after else ACTIVE

    def signing_kid(self, at: datetime, issuer: str | None = None) -> str | None:
        """The key that signs at `at` a pass of `issuer` (its county adcode: the pass number's first
        six digits; None: any): of the keys active then, not withdrawn nor past their end, whose
        prefixes cover the issuer, the one activated last (ties by kid); None when there is none."""
        best = None
        for kid, activated in self._activated.items():
            grant = self._grants[kid]
            if activated > at or self.withdrawn(kid, at) or (grant.not_after and at > grant.not_after):
                continue
            if issuer is None or grant.covers(issuer):
                best = max(best or (activated, kid), (activated, kid))
        return best and best[1]

    def signing_kids(self, at: datetime) -> set[str]:
        """The keys that sign at `at` for some issuer: each key that is the one signing under one of its prefixes."""
        return {
            kid
            for kid, grant in self._grants.items()
            if any(self.signing_kid(at, p) == kid for p in (grant.prefixes or (None,)))
        }

    def signer_at(self, at: datetime, issuer: str | None = None) -> Signer | None:
        """The signer of the key that signs at `at` for `issuer`; None when no key is in force then.
        SigningKeyMissing when that key's private key is not here: never another key instead."""
        kid = self.signing_kid(at, issuer)
        if kid is None:
            return None
        signer = None if self.missing and kid in self.missing else self._signers(kid)
        if signer is None:
            raise SigningKeyMissing(kid, at)
        return signer

    def may_lack(self, kid: str) -> bool:
        """May a decision answer `no_signing_key` for `kid` missing (live: yes; a replay: only if
        the recorded decision did)?"""
        return self.missing is None or kid in self.missing

    def has_private(self, kid: str) -> bool:
        return self._signers(kid) is not None

    def rows(self, at: datetime) -> list[dict]:
        """The ring as `greenchannel keys list` and the worker's `/keys/` view show it, at `at`:
        each key's activation ("always": since ever; None: never), withdrawal, status, prefixes,
        end, whether it signs then and whether its private key is here."""
        signing = self.signing_kids(at)

        def since(kid: str) -> str | None:
            activated = self.activated_at(kid)
            return format_time(activated) if activated else "always" if self.ever_active(kid) else None

        def grant(kid: str) -> Grant:
            return self._grants.get(kid, ANY)

        return [
            {
                "kid": kid,
                "active_from": since(kid),
                "not_after": format_time(end) if (end := grant(kid).not_after) else None,
                "prefixes": list(p) if (p := grant(kid).prefixes) is not None else None,
                "status": self.status_at(kid, at),
                "withdrawn_from": format_time(w) if (w := self.withdrawn_at(kid)) else None,
                "signs": kid in signing,
                "private_key_here": self.has_private(kid),
            }
            for kid in self.kids()
        ]

    def kids(self) -> list[str]:
        """Every kid, by activation (since ever first; pending last), then kid."""
        return sorted(self.public_keys, key=lambda kid: (self._activated.get(kid, _NEVER), kid))
