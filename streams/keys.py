"""The pass-signing key pair: made on first run into a local, git-ignored folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.passes import Signer

__all__ = ["load_signer", "load_public_key", "load_keyring", "key_id", "public_pem", "key_record", "keyring_entry", "publish_public_key", "PRIVATE_NAME", "PUBLIC_NAME"]

PRIVATE_NAME = "pass-signing.key"
PUBLIC_NAME = "pass-signing.pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_signer(key_dir: Path) -> Signer:
    """The signer for `key_dir`, creating the key pair there if it does not exist yet."""
    private_path = key_dir / PRIVATE_NAME
    if not private_path.exists():
        key_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        # Write-then-rename so two workers starting together never read half a key.
        tmp = private_path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, private_path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    public_path = key_dir / PUBLIC_NAME
    pem = public_pem(key.public_key())
    if not public_path.exists() or public_path.read_bytes() != pem:
        public_path.write_bytes(pem)
    return Signer(key, key_id(key.public_key()))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """What a checkpoint needs to verify passes offline."""
    if path.is_dir():
        path = path / PUBLIC_NAME
    return serialization.load_pem_public_key(path.read_bytes())


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_keyring(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Every public key in `paths` (PEM files, or folders of `*.pub`), by key id (a token's `kid`)."""
    ring: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        for file in sorted(path.glob("*.pub")) if path.is_dir() else [path]:
            key = serialization.load_pem_public_key(file.read_bytes())
            ring[key_id(key)] = key
    return ring


def key_record(signer: Signer) -> bytes:
    """What a worker publishes on the keys topic (keyed by key id) for stations to verify with."""
    return orjson.dumps({"kid": signer.key_id, "algorithm": "Ed25519",
                         "public_key": public_pem(signer.public_key).decode()})


def keyring_entry(record: dict) -> tuple[str, Ed25519PublicKey]:
    """(kid, key) of a keys-topic record; ValueError when its kid is not the key's own."""
    key = serialization.load_pem_public_key(record["public_key"].encode())
    if not isinstance(key, Ed25519PublicKey) or key_id(key) != record.get("kid"):
        raise ValueError(f"key record {record.get('kid')!r} does not hold the Ed25519 key of that id")
    return record["kid"], key


async def publish_public_key(bootstrap: str, topic: str, signer: Signer) -> None:
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, key_record(signer), key=signer.key_id.encode())
    finally:
        await producer.stop()
