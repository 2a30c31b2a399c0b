"""The pass-signing keys on disk: a local, git-ignored folder (GC_KEY_DIR) of private keys by kid.

`pass-signing.key` (and `.pub`) is the ring's first key, made on the first run in an empty folder;
its record on the keys topic has no time (active since ever), and each worker publishes it at
start. `greenchannel keys rotate` adds one `<kid>.key` / `<kid>.pub` pair per new key and
publishes it active from a time. Which key signs a pass is the ring's, from the log
(`models.keyring`): this folder only holds the private keys it names.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.keyring import ACTIVE, Keyring, key_id, public_pem
from models.passes import Signer

from .connection import Connection

__all__ = [
    "KeyDir",
    "load_signer",
    "load_public_key",
    "load_keyring",
    "key_id",
    "public_pem",
    "key_record",
    "publish_public_key",
    "PRIVATE_NAME",
    "PUBLIC_NAME",
]

PRIVATE_NAME = "pass-signing.key"
PUBLIC_NAME = "pass-signing.pub"


class KeyDir:
    """The private keys of one key folder, by kid; read again when a kid not seen yet is asked for
    (a key put there after the process started, by `keys rotate` or an operator's copy)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._signers: dict[str, Signer] = {}

    def signer(self, kid: str) -> Signer | None:
        """The signer of key `kid`, None when its private key is not in the folder."""
        if kid not in self._signers:
            self._read()
        return self._signers.get(kid)

    def _read(self) -> None:
        for file in sorted(self.path.glob("*.key")) if self.path.is_dir() else ():
            if file.stem in self._signers:
                continue
            try:
                key = serialization.load_pem_private_key(file.read_bytes(), password=None)
            except (OSError, ValueError, TypeError):
                continue  # half a key being written, or not a key: not one to sign with
            if isinstance(key, Ed25519PrivateKey):
                signer = Signer(key, key_id(key.public_key()))
                self._signers.setdefault(signer.key_id, signer)

    def first(self) -> Signer | None:
        """The ring's first key (`pass-signing.key`), made if the folder holds no key at all yet;
        None when it holds rotated keys only."""
        private_path = self.path / PRIVATE_NAME
        if not private_path.exists() and not any(self.path.glob("*.key")):
            _write_private(private_path, Ed25519PrivateKey.generate())
        if not private_path.exists():
            return None
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        _write_public(self.path / PUBLIC_NAME, key.public_key())
        return Signer(key, key_id(key.public_key()))

    def new_key(self) -> Signer:
        """A new key pair, `<kid>.key` and `<kid>.pub` (what `greenchannel keys rotate` makes)."""
        key = Ed25519PrivateKey.generate()
        kid = key_id(key.public_key())
        _write_private(self.path / f"{kid}.key", key)
        _write_public(self.path / f"{kid}.pub", key.public_key())
        return self.signer(kid)

    def seeded(self) -> Keyring:
        """The ring signing with this folder's keys, holding the first key (active since ever, as its
        record says): what the worker and the replay start from before they read the keys topic."""
        ring = Keyring(self.signer)
        first = self.first()
        if first is not None:
            ring.add(first.key_id, first.public_key, ACTIVE)
        return ring


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    """Write-then-link, mode 0600, so two workers starting together never read half a key and an
    existing key is never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _write_public(path: Path, public: Ed25519PublicKey) -> None:
    pem = public_pem(public)
    if not path.exists() or path.read_bytes() != pem:
        path.write_bytes(pem)


def load_signer(key_dir: Path) -> Signer:
    """The signer of the folder's first key, creating the key pair there if the folder holds none."""
    signer = KeyDir(key_dir).first()
    if signer is None:
        raise FileNotFoundError(f"{key_dir} holds rotated keys but no {PRIVATE_NAME}, the ring's first key")
    return signer


def load_public_key(path: Path) -> Ed25519PublicKey:
    """What a checkpoint needs to verify passes offline."""
    if path.is_dir():
        path = path / PUBLIC_NAME
    return serialization.load_pem_public_key(path.read_bytes())


def load_keyring(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Every public key in `paths` (PEM files, or folders of `*.pub`), by key id (a token's `kid`)."""
    ring: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        for file in sorted(path.glob("*.pub")) if path.is_dir() else [path]:
            key = serialization.load_pem_public_key(file.read_bytes())
            ring[key_id(key)] = key
    return ring


def key_record(signer: Signer) -> bytes:
    """What a worker publishes on the keys topic (keyed by key id) for its first key, as before the
    ring: no status, no time (active since ever)."""
    return orjson.dumps(
        {"kid": signer.key_id, "algorithm": "Ed25519", "public_key": public_pem(signer.public_key).decode()}
    )


async def publish_public_key(connection: Connection, topic: str, signer: Signer) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**connection.kwargs(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, key_record(signer), key=signer.key_id.encode())
    finally:
        await producer.stop()
