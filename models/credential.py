"""The pass's credential: the signed token a driver shows as a QR code, its one codec.

A token is `GC1:` + Base45(COSE_Sign1) (RFC 9052), after the EU Digital COVID Certificate's
pipeline less its compression: a protected header {alg: EdDSA (-8), kid: the key id's UTF-8 bytes},
no unprotected header, a CBOR payload of the claims with small integer keys (`_K`), and an
Ed25519 signature over the COSE Sig_structure. CBOR is cbor2's canonical encoding (RFC 8949
core deterministic), and Ed25519 is deterministic, so the same claims always give the same bytes;
a payload that is not canonical is refused, so a token has one spelling. Every field is as small as
it can be read back exactly (see `_K`, `_checkpoint_out`, `_kid_bytes`): the signature alone is 96
of the QR's characters. Every character of
`GC1:` + Base45 is in the QR alphanumeric set, so a QR code carries it at 5.5 bits a character.

The format before this one, base64url(canonical JSON claims with `kid`) + "." + base64url(sig),
still verifies (`_legacy`) until the passes that carry it expire: its claims carry `exp` like any
token, and the checks refuse a pass past it.

The route's adcodes are not in the token: a checkpoint checks only that it is on the route's
checkpoints (`cp`), and the adcodes would double the token (measured in tests/unit/test_credential.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import base45
import cbor2
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PREFIX",
    "SALT_BYTES",
    "QR_CHARS",
    "route_digest",
    "Claims",
    "DriverBinding",
    "InvalidToken",
    "MAX_TOKEN_CHARS",
    "normalise_id_number",
    "sign",
    "legacy_sign",
    "verify",
    "read_unverified",
]

PREFIX = "GC1:"
MAX_TOKEN_CHARS = 4096  # far above any pass's token (a QR code of version 40 holds 4,296 characters)
_ALG_EDDSA = -8  # COSE algorithm EdDSA (RFC 9053)
_HDR_ALG, _HDR_KID = 1, 4  # COSE header labels
_COSE_SIGN1_TAG = 18
# The claims' CBOR map keys: pass number (an integer when it is 12 digits), plate, not before (epoch
# seconds), validity (minutes after not before), the route's checkpoints, the driver [salt, id_hash],
# and, instead of the checkpoints when listing them would not fit QR_CHARS, the route's digest.
_K = {"pid": 1, "plate": 2, "nbf": 3, "min": 4, "cp": 5, "drv": 6, "rd": 7}
# A token of at most this many characters is a QR code of version 10 at error correction level Q
# (alphanumeric mode): what a phone reads at a glance from a printed page or a windscreen.
QR_CHARS = 221
_DIGEST_BYTES = 6
_PASS_NUMBER = re.compile(r"[1-9][0-9]{11}")
# 6 bytes each: a salt need only be unique to defeat precomputed tables, and 48 bits of hash make a
# wrong ID number match once in 2.8 x 10^14; every byte is 1.5 characters of the QR code.
SALT_BYTES = _SALT_BYTES = _HASH_BYTES = 6


class InvalidToken(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the driver ----------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[0-9]{17}[0-9X]$")


def normalise_id_number(id_number: str) -> str:
    """A resident ID number as hashed: no spaces, upper-case X (ValueError when it is not 18 characters
    of digits and a final digit or X)."""
    text = "".join(str(id_number).split()).upper()
    if not _ID_RE.match(text):
        raise ValueError("an ID number is 17 digits and a digit or X")
    return text


@dataclass(frozen=True, slots=True)
class DriverBinding:
    """人车证一致 without personal data in the QR: SHA-256(salt || ID number)[:16], and its 16-byte salt.
    Whoever holds the token can still test every ID number (about 10^10 plausible ones): it binds,
    it does not hide (README, "At a checkpoint")."""

    salt: bytes
    id_hash: bytes

    @classmethod
    def of(cls, id_number: str, salt: bytes) -> DriverBinding:
        if len(salt) != _SALT_BYTES:
            raise ValueError(f"a driver binding's salt is {_SALT_BYTES} bytes")
        digest = hashlib.sha256(salt + normalise_id_number(id_number).encode()).digest()
        return cls(salt, digest[:_HASH_BYTES])

    @classmethod
    def from_wire(cls, obj: object) -> DriverBinding:
        """{"salt": base64, "id_hash": base64} as a request carries it (ValueError otherwise)."""
        if not isinstance(obj, Mapping):
            raise ValueError("driver.binding must be an object {salt, id_hash}")
        try:
            salt, id_hash = (base64.b64decode(str(obj.get(k, "")), validate=True) for k in ("salt", "id_hash"))
        except (binascii.Error, ValueError):
            raise ValueError("driver.binding's salt and id_hash must be base64") from None
        if len(salt) != _SALT_BYTES or len(id_hash) != _HASH_BYTES:
            raise ValueError(f"driver.binding's salt and id_hash are {_SALT_BYTES} bytes each")
        return cls(salt, id_hash)

    def to_wire(self) -> dict:
        return {"salt": base64.b64encode(self.salt).decode(), "id_hash": base64.b64encode(self.id_hash).decode()}

    def matches(self, id_number: str) -> bool:
        """Whether `id_number` is the bound driver's (False for anything that is not an ID number)."""
        try:
            other = DriverBinding.of(id_number, self.salt)
        except ValueError:
            return False
        return hmac.compare_digest(other.id_hash, self.id_hash)


# --- the claims ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token asserts: pass number, plate, key, validity, the route's checkpoints, the driver."""

    pid: str
    plate: str
    kid: str
    nbf: datetime
    exp: datetime
    cp: tuple[str, ...] | None  # the route's checkpoints, or None: the token carries their digest
    driver: DriverBinding | None = None
    route_digest: bytes | None = None

    def signable(self) -> dict:
        """The claims as `sign` takes them (the key id aside): what signing them again with another key needs."""
        return {
            **{"pid": self.pid, "plate": self.plate, "nbf": self.nbf, "exp": self.exp},
            **{"cp": self.cp, "rd": self.route_digest, "drv": self.driver},
        }

    def names_route(self, checkpoint_ids: Sequence[str]) -> bool:
        """Whether the token was signed for a route of these checkpoints (listed, or by digest)."""
        if self.cp is not None:
            return list(self.cp) == list(checkpoint_ids)
        return self.route_digest == route_digest(checkpoint_ids)


def route_digest(checkpoint_ids: Sequence[str]) -> bytes:
    """What a token too long with its checkpoints listed carries instead: SHA-256 of their ids."""
    return hashlib.sha256("\n".join(checkpoint_ids).encode()).digest()[:_DIGEST_BYTES]


# A checkpoint id is text in the claims unless it has one of the planner's two shapes
# (`routing.planner`), which are carried as integers, 5 bytes instead of 11 to 13: a border crossing
# BX-<prefecture>-<prefecture> as the 8 digits of both, a destination DST-<county adcode> as its 6.
# Neither starts with 0, so the integer gives back the exact id, and the two never overlap.
_BORDER = re.compile(r"BX-([1-9][0-9]{3})-([1-9][0-9]{3})")
_DESTINATION = re.compile(r"DST-([1-9][0-9]{5})")


def _checkpoint_out(checkpoint_id: str) -> int | str:
    if m := _BORDER.fullmatch(checkpoint_id):
        return int(m[1] + m[2])
    if m := _DESTINATION.fullmatch(checkpoint_id):
        return int(m[1])
    return checkpoint_id


def _checkpoint_in(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 100_000 <= value < 1_000_000:
            return f"DST-{value}"
        if 10_000_000 <= value < 100_000_000:
            return f"BX-{value // 10_000}-{value % 10_000:04d}"
    raise InvalidToken("token's checkpoints are not a list of ids")


def _epoch(value: datetime | str) -> int:
    from .records import parse_time

    at = parse_time(value) if isinstance(value, str) else value
    return int(at.timestamp())


def _payload(claims: Mapping, *, listed: bool = True) -> bytes:
    """The canonical CBOR of the worker's claims (pid, plate, nbf, exp, cp; drv a DriverBinding or None),
    the checkpoints `listed` or as their digest. Validity is carried in whole minutes: an `exp`
    between two is read as the earlier one."""
    pid, nbf = claims["pid"], _epoch(claims["nbf"])
    body: dict[int, object] = {
        _K["pid"]: int(pid) if _PASS_NUMBER.fullmatch(pid) else pid,
        _K["plate"]: claims["plate"],
        _K["nbf"]: nbf,
        _K["min"]: max(0, _epoch(claims["exp"]) - nbf) // 60,
    }
    if claims["cp"] is None:  # claims read from a token of a route by digest (`Claims.signable`)
        body[_K["rd"]] = claims["rd"]
    elif listed:
        body[_K["cp"]] = [_checkpoint_out(c) for c in claims["cp"]]
    else:
        body[_K["rd"]] = route_digest(claims["cp"])
    driver = claims.get("drv")
    if driver is not None:
        body[_K["drv"]] = [driver.salt, driver.id_hash]
    return cbor2.dumps(body, canonical=True)


def _kid_bytes(kid: str) -> bytes:
    """A key id as the header carries it: the 8 bytes of the 16 hex digits `models.keyring.key_id`
    makes, else its UTF-8 (never 8 bytes long: that length is the hex ids')."""
    if re.fullmatch(r"[0-9a-f]{16}", kid):
        return bytes.fromhex(kid)
    raw = kid.encode()
    if len(raw) == 8 or not raw:
        raise ValueError(f"a key id is 16 hex digits, or text of other than 8 bytes: {kid!r}")
    return raw


def _kid_text(raw: bytes) -> str:
    return raw.hex() if len(raw) == 8 else raw.decode()


def _protected(kid: str) -> bytes:
    return cbor2.dumps({_HDR_ALG: _ALG_EDDSA, _HDR_KID: _kid_bytes(kid)}, canonical=True)


def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)


def sign(claims: Mapping, key: Ed25519PrivateKey, kid: str) -> str:
    """The token of `claims` (pid, plate, nbf, exp, cp, optional drv) signed by `key`, whose id is `kid`:
    the checkpoints listed when that fits QR_CHARS, else their digest (a station then takes the
    route from the decision it stored, `Claims.names_route`)."""
    token = _signed(_protected(kid), _payload(claims), key)
    if len(token) > QR_CHARS:
        token = _signed(_protected(kid), _payload(claims, listed=False), key)
    return token


def _signed(protected: bytes, payload: bytes, key: Ed25519PrivateKey) -> str:
    signature = key.sign(_to_be_signed(protected, payload))
    message = cbor2.dumps(cbor2.CBORTag(_COSE_SIGN1_TAG, [protected, {}, payload, signature]), canonical=True)
    return PREFIX + base45.b45encode(message).decode("ascii")


def legacy_sign(claims: Mapping, key: Ed25519PrivateKey, kid: str) -> str:
    """A token of the format before COSE (JSON claims, string times): what passes issued before carry."""
    from .records import canonical

    body = canonical({**claims, "kid": kid})
    return f"{_b64(body)}.{_b64(key.sign(body))}"


# --- reading ---------------------------------------------------------------------------------------


def _cose_parts(token: str) -> tuple[bytes, bytes, bytes, str]:
    """(protected, payload, signature, kid) of a `GC1:` token, its structure checked."""
    try:
        raw = base45.b45decode(token[len(PREFIX) :])
        message = cbor2.loads(raw, max_depth=8, allow_duplicate_keys=False)
    except Exception:
        raise InvalidToken("token is not Base45 COSE") from None
    if not isinstance(message, cbor2.CBORTag) or message.tag != _COSE_SIGN1_TAG:
        raise InvalidToken("token is not a COSE_Sign1")
    parts = message.value
    if not isinstance(parts, Sequence) or len(parts) != 4:
        raise InvalidToken("token is not a COSE_Sign1")
    protected, unprotected, payload, signature = parts
    if not (isinstance(protected, bytes) and isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise InvalidToken("token is not a COSE_Sign1")
    if not isinstance(unprotected, Mapping) or unprotected:
        raise InvalidToken("token has an unprotected header")
    try:
        header = cbor2.loads(protected, max_depth=2, allow_duplicate_keys=False)
    except Exception:
        raise InvalidToken("token's header is not CBOR") from None
    if not isinstance(header, Mapping) or header.get(_HDR_ALG) != _ALG_EDDSA:
        raise InvalidToken("token is not signed with EdDSA")
    kid = header.get(_HDR_KID)
    if not isinstance(kid, bytes) or not kid:
        raise InvalidToken("token names no key")
    try:
        return protected, payload, signature, _kid_text(kid)
    except UnicodeDecodeError:
        raise InvalidToken("token's key id is not text") from None


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"token's {name} is not text")
    return value


def _cose_claims(payload: bytes, kid: str) -> Claims:
    try:
        body = cbor2.loads(payload, max_depth=4, allow_duplicate_keys=False)
    except Exception:
        raise InvalidToken("token's claims are not CBOR") from None
    if not isinstance(body, Mapping) or cbor2.dumps(body, canonical=True) != payload:
        raise InvalidToken("token's claims are not a canonical CBOR map")
    pid, nbf, minutes, cp, drv, rd = (body.get(_K[k]) for k in ("pid", "nbf", "min", "cp", "drv", "rd"))
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**40 for t in (nbf, minutes)):
        raise InvalidToken("token's validity is not two times")
    if (cp is None) == (rd is None):
        raise InvalidToken("token names its route's checkpoints neither listed nor by digest, or both")
    if cp is not None and (not isinstance(cp, Sequence) or isinstance(cp, (str, bytes))):
        raise InvalidToken("token's checkpoints are not a list of ids")
    if rd is not None and not (isinstance(rd, bytes) and len(rd) == _DIGEST_BYTES):
        raise InvalidToken("token's route digest is not 6 bytes")
    if isinstance(pid, int) and not isinstance(pid, bool) and 10**11 <= pid < 10**12:
        pid = str(pid)
    start = datetime.fromtimestamp(nbf, UTC)  # type: ignore[arg-type]  # checked above
    return Claims(
        pid=_text(pid, "pass number"),
        plate=_text(body.get(_K["plate"]), "plate"),
        kid=kid,
        nbf=start,
        exp=datetime.fromtimestamp(nbf + minutes * 60, UTC),  # type: ignore[operator]
        cp=None if cp is None else tuple(_checkpoint_in(c) for c in cp),
        driver=_driver(drv),
        route_digest=rd,  # type: ignore[arg-type]  # checked above
    )


def _driver(value: object) -> DriverBinding | None:
    if value is None:
        return None
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, bytes) for v in value)
        or (len(value[0]), len(value[1])) != (_SALT_BYTES, _HASH_BYTES)
    ):
        raise InvalidToken("token's driver binding is not [salt, id_hash]")
    return DriverBinding(value[0], value[1])


def _legacy_parts(token: str) -> tuple[bytes, bytes, dict]:
    try:
        body_text, sig_text = token.split(".")
        body, sig = _unb64(body_text), _unb64(sig_text)
        claims = orjson.loads(body)
    except (ValueError, AttributeError, binascii.Error):
        raise InvalidToken("token is not two base64url parts") from None
    if not isinstance(claims, dict):
        raise InvalidToken("token is not two base64url parts")
    return body, sig, claims


def _legacy_claims(claims: dict) -> Claims:
    from .records import parse_time

    cp = claims.get("cp")
    if not isinstance(cp, list) or not all(isinstance(c, str) for c in cp):
        raise InvalidToken("token's checkpoints are not a list of ids")
    try:
        nbf, exp = parse_time(claims.get("nbf")), parse_time(claims.get("exp"))
    except (ValueError, TypeError):
        raise InvalidToken("token's validity is not two times") from None
    return Claims(
        pid=_text(claims.get("pid"), "pass number"),
        plate=_text(claims.get("plate"), "plate"),
        kid=_text(claims.get("kid"), "key id"),
        nbf=nbf,
        exp=exp,
        cp=tuple(cp),
    )


def _read(token: object) -> tuple[Claims, bytes, bytes]:
    """(claims, signed bytes, signature) of a token, nothing verified; InvalidToken when it is none."""
    if not isinstance(token, str):
        raise InvalidToken(f"token is not text but {type(token).__name__}")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"token is longer than {MAX_TOKEN_CHARS} characters")
    if token.startswith(PREFIX):
        protected, payload, signature, kid = _cose_parts(token)
        return _cose_claims(payload, kid), _to_be_signed(protected, payload), signature
    body, signature, raw = _legacy_parts(token)
    return _legacy_claims(raw), body, signature


def read_unverified(token: object) -> Claims:
    """What a token says, its signature unchecked (InvalidToken when it is not a token at all)."""
    return _read(token)[0]


def verify(token: object, keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey]) -> Claims:
    """The claims of a genuine token; InvalidToken for anything forged, altered, garbled or mistyped.

    `keys` is one public key, or a keyring by key id: the token's kid picks the key, and a kid the
    keyring does not hold is refused (a checkpoint accepts every key it was given)."""
    claims, signed, signature = _read(token)
    if isinstance(keys, Mapping):
        key = keys.get(claims.kid)
        if key is None:
            raise InvalidToken(f"token signed with an unknown key (kid {claims.kid})")
    else:
        key = keys
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise InvalidToken("token signature does not verify") from None
    return claims
