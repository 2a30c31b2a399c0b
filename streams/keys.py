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

from models.keyring import ACTIVE, Keyring, key_entry, key_id, parse_key_entry, public_pem
from models.passes import Signer
from models.records import Unparseable

from .connection import Connection

__all__ = [
    "KeyDir",
    "write_secret_once",
    "load_signer",
    "load_public_key",
    "load_keyring",
    "key_id",
    "public_pem",
    "key_record",
    "publish_public_key",
    "PRIVATE_NAME",
    "PUBLIC_NAME",
    "RECORD_NAME",
    "root_init",
    "load_root_private",
    "pinned_root",
]

PRIVATE_NAME = "pass-signing.key"
PUBLIC_NAME = "pass-signing.pub"
RECORD_NAME = "pass-signing.record.json"  # the first key's root-signed record, which the worker publishes
ROOT_PRIVATE_NAME, ROOT_PUBLIC_NAME = "root.key", "root.pub"


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

    def first_record(self, root: Ed25519PublicKey | None, root_private: Ed25519PrivateKey | None) -> dict | None:
        """The first key's record signed by `root` (active since ever, national): the one in
        `pass-signing.record.json` (an operator's, made with the root), or, when the root's private
        key is at hand (the development root), one made and kept there. None when there is neither."""
        first = self.first()
        if first is None or root is None:
            return None
        path = self.path / RECORD_NAME
        if path.exists():
            try:
                record = orjson.loads(path.read_bytes())
                if parse_key_entry(record, root).kid == first.key_id:
                    return record
            except (orjson.JSONDecodeError, Unparseable, AttributeError):
                pass  # another root's (a development root made again), or not a record: made again below
        if root_private is None or key_id(root_private.public_key()) != key_id(root):
            return None
        record = key_entry(first.public_key, ACTIVE, at=None, root=root_private)
        path.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        return record

    def seeded(self, root: Ed25519PublicKey | None = None, root_private: Ed25519PrivateKey | None = None) -> Keyring:
        """The ring signing with this folder's keys, pinned to `root`, holding the first key when
        the root signed its record (`first_record`): what the worker and the replay start from
        before they read the keys topic."""
        ring = Keyring(self.signer, root=root)
        record = self.first_record(root, root_private)
        if record is not None:
            ring.apply(ring.take(record))
        return ring


def root_init(out: Path) -> Ed25519PrivateKey:
    """A new root key pair in `out`: root.key (0600, never on the broker) and root.pub (what the
    workers and stations pin). An existing root.key is kept, never overwritten."""
    _write_private(out / ROOT_PRIVATE_NAME, Ed25519PrivateKey.generate())
    key = load_root_private(out / ROOT_PRIVATE_NAME)
    _write_public(out / ROOT_PUBLIC_NAME, key.public_key())
    return key


def load_root_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def pinned_root(settings, *, create: bool = False) -> tuple[Ed25519PublicKey | None, Ed25519PrivateKey | None]:
    """The pinned root public key (GC_ROOT_PUBLIC_KEY), and its private half when it lies beside it
    (root.key: the development root; never so in production). `create`: with GC_ROOT_PUBLIC_KEY
    unset, make the development root in DATA_DIR/root on first run. (None, None): no root pinned."""
    path = settings.root_public_path
    if create and settings.root_public_key is None and not path.exists():
        root_init(path.parent)
    if not path.exists():
        return None, None
    public = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    beside = path.parent / ROOT_PRIVATE_NAME
    try:
        private = load_root_private(beside) if beside.exists() else None
    except (OSError, ValueError):
        private = None
    return public, private


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret_once(path, pem)


def write_secret_once(path: Path, secret: bytes) -> None:
    """Write-then-link, mode 0600, so two processes starting together never read half a secret and
    an existing one is never overwritten (the first made wins; the other's is dropped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
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


def key_record(record: dict) -> bytes:
    """A root-signed key record's bytes, as a worker publishes it on the keys topic (keyed by key id)."""
    return orjson.dumps(record)


async def publish_public_key(connection: Connection, topic: str, record: dict) -> None:
    """Publish the first key's root-signed record (`KeyDir.first_record`)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**connection.kwargs(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, key_record(record), key=record["kid"].encode())
    finally:
        await producer.stop()
