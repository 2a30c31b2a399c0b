"""`greenchannel risk …`, `enterprises …` and `keys …`: the operators' reference-data commands.

Thin edges over `models.operators`: each command validates everything first, publishes only
what the worker would accept (keyed by adcode or credit code), prints what it sent, and exits
non-zero on any error. The `list` and `export` commands read the topics themselves, from the
beginning, into the same as-of books the worker keeps (`models.reference`): the log is the
source of truth, it holds the history `--at` needs, and it needs no projector running.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.keyring import ACTIVE, NATIONAL, Keyring, key_entry, key_id, parse_key_entry
from models.operators import (
    EntryError,
    enterprise_csv,
    enterprise_entry,
    key_withdrawal,
    read_enterprise_csv,
    risk_entry,
)
from models.records import RISK_LEVELS, Unparseable, format_time, load_object, parse_enterprise, parse_risk, parse_time
from models.reference import EnterpriseBook, RiskBook
from routing import Gazetteer

from .handlers import Topics
from .keys import PUBLIC_NAME, KeyDir, load_root_private, pinned_root, root_init
from .settings import Settings

__all__ = ["add_arguments", "cmd_risk", "cmd_enterprises", "cmd_keys", "publish", "set_risk", "read_keyring"]

err = Console(stderr=True)
PROGRESS_FROM = 500  # rows: a file this big gets a progress bar


def add_arguments(sub) -> None:
    risk = sub.add_parser("risk", help="region risk levels (gc.region.risk)").add_subparsers(
        dest="risk_command", required=True
    )
    set_ = risk.add_parser("set", help="declare a region's risk level")
    set_.add_argument("adcode", help="2-digit province, 4-digit prefecture or 6-digit county code")
    set_.add_argument("level", choices=RISK_LEVELS)
    set_.add_argument("--at", metavar="TIME", help="RFC 3339 time it takes effect (default: now)")
    set_.add_argument("--note", metavar="TEXT", help="the operator's note, e.g. the notice it follows")
    listing = risk.add_parser("list", help="the levels in force now (read from the topic)")
    listing.add_argument("--at", metavar="TIME", help="RFC 3339 time (default: now)")

    ent = sub.add_parser("enterprises", help="the key-enterprise list (gc.enterprises)").add_subparsers(
        dest="enterprises_command", required=True
    )
    add = ent.add_parser("add", help="put a firm on the list")
    add.add_argument("credit_code")
    add.add_argument("name")
    remove = ent.add_parser("remove", help="take a firm off the list (its P2/P3 passes are revoked)")
    remove.add_argument("credit_code")
    for name, text in (("list", "the firms listed now"), ("export", "the firms listed now, as CSV")):
        p = ent.add_parser(name, help=f"{text} (read from the topic)")
        p.add_argument("--at", metavar="TIME", help="RFC 3339 time (default: now)")
        if name == "export":
            p.add_argument("--output", "-o", metavar="FILE", help="write there instead of standard output")
    imp = ent.add_parser("import", help="add every good row of a CSV (credit_code,name,…; UTF-8, BOM or not)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--dry-run", action="store_true", help="validate only: publish nothing")
    _add_key_arguments(sub)


def _add_key_arguments(sub) -> None:
    keys = sub.add_parser(
        "keys",
        help="the pass-signing keyring (gc.pass.keys); alone: make the first key pair "
        "if needed and print its public key path",
    )
    key_sub = keys.add_subparsers(dest="keys_command")
    rotate = key_sub.add_parser(
        "rotate",
        help="a new signing key into GC_KEY_DIR, its record signed by the root and published active: "
        "new passes of its prefixes are signed with it",
    )
    rotate.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="ADCODE",
        help="an adcode prefix (2, 4 or 6 digits) of the pass numbers it may issue; repeat (default: national, "
        "every province)",
    )
    rotate.add_argument("--not-after", metavar="TIME", help="RFC 3339 end of its validity (default: --days)")
    rotate.add_argument("--days", type=float, default=365.0, help="its validity from --at, in days (default 365)")
    withdraw = key_sub.add_parser(
        "withdraw",
        help="mark a key compromised: its tokens are held at the next scan, "
        "its active passes reissued with the key in force",
    )
    withdraw.add_argument("kid")
    listing = key_sub.add_parser(
        "list", help="the ring and each key's status, prefixes, validity (read from the topic, checked with the root)"
    )
    for p, when in ((rotate, "it takes effect"), (withdraw, "it takes effect"), (listing, "of the statuses")):
        p.add_argument("--at", metavar="TIME", help=f"RFC 3339 time {when} (default: now)")
    for p in (rotate, withdraw):
        p.add_argument(
            "--root-key",
            type=Path,
            metavar="FILE",
            help="the root's private key (root.key), which signs the record (default: the development root "
            "beside GC_ROOT_PUBLIC_KEY, when there is one)",
        )
    root = key_sub.add_parser("root", help="the root of trust: `root init --out DIR` makes root.key and root.pub")
    root_sub = root.add_subparsers(dest="root_command", required=True)
    init = root_sub.add_parser("init", help="a new root key pair in DIR: root.key (0600, keep offline) and root.pub")
    init.add_argument("--out", type=Path, required=True, metavar="DIR")
    init.add_argument("--print-seed", action="store_true", help="print the 32-byte seed in hex, for a paper backup")


def _when(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        return parse_time(text)
    except ValueError as exc:
        raise EntryError(f"--at {exc}") from None


async def publish(settings: Settings, topic: str, entries: list[tuple[str, dict]], *, progress: bool = False) -> None:
    """Send (key, value) entries to `topic` and wait until the broker has every one."""
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=5, acks="all")
    await producer.start()
    try:
        with Progress(console=err, disable=not progress, transient=True) as bar:
            task = bar.add_task(f"publishing to {topic}", total=len(entries))
            pending = []
            for key, value in entries:
                pending.append(await producer.send(topic, orjson.dumps(value), key=key.encode()))
                bar.advance(task)
            await producer.flush()
            await asyncio.gather(*pending)
    finally:
        await producer.stop()


def set_risk(settings: Settings, adcode: str, level: str, *, at: datetime, note: str | None = None) -> dict:
    """Validate and publish one risk level (what `risk set` and the demo's operator do)."""
    entry = risk_entry(adcode, level, at=at, note=note, is_region=Gazetteer.default().names_region)
    asyncio.run(publish(settings, Topics.with_prefix(settings.topic_prefix).risk, [(entry["adcode"], entry)]))
    return entry


def _sent(topic: str, entry: dict) -> None:
    print(f"sent to {topic}: {orjson.dumps(entry).decode()}")


def cmd_risk(settings: Settings, args) -> int:
    topics = Topics.with_prefix(settings.topic_prefix)
    try:
        at = _when(args.at)
        if args.risk_command == "set":
            _sent(topics.risk, set_risk(settings, args.adcode, args.level, at=at, note=args.note))
            return 0
    except EntryError as exc:
        err.print(f"[red]not sent: {exc}[/red]")
        return 1
    book = read_books(settings)[0]
    gazetteer = Gazetteer.default()
    table = Table("adcode", "region", "level", title=f"risk levels in force at {at:%Y-%m-%d %H:%M} UTC")
    for prefix, level in book.snapshot(at).items():
        table.add_row(prefix, gazetteer.region_name(prefix) or "?", level)
    Console().print(table)
    return 0


def read_books(settings: Settings) -> tuple[RiskBook, EnterpriseBook]:
    """The whole risk and key-list topics, read as the worker reads them at start."""
    from .worker.reference import read_whole_topics

    topics = Topics.with_prefix(settings.topic_prefix)
    risk, enterprises, is_region = RiskBook(), EnterpriseBook(), Gazetteer.default().names_region

    def apply(topic: str, partition: int, m) -> None:
        try:
            obj = load_object(m.value)
            if topic == topics.risk:
                risk.apply(parse_risk(obj, timestamp_ms=m.timestamp, is_region=is_region))
            else:
                enterprises.apply(parse_enterprise(obj, timestamp_ms=m.timestamp))
        except ValueError:  # dead-lettered by the worker: not in force
            pass

    asyncio.run(read_whole_topics(settings.connection, [topics.risk, topics.enterprises], apply))
    return risk, enterprises


def cmd_enterprises(settings: Settings, args) -> int:
    topics = Topics.with_prefix(settings.topic_prefix)
    command = args.enterprises_command
    try:
        at = _when(getattr(args, "at", None))
        if command in ("add", "remove"):
            entry = enterprise_entry(args.credit_code, getattr(args, "name", ""), command, at=at)
            asyncio.run(publish(settings, topics.enterprises, [(entry["credit_code"], entry)]))
            _sent(topics.enterprises, entry)
            return 0
        if command == "import":
            return _import(settings, args.file, dry_run=args.dry_run, at=at)
    except EntryError as exc:
        err.print(f"[red]not sent: {exc}[/red]")
        return 1
    listed = read_books(settings)[1].listed_at(at)
    if command == "export":
        text = enterprise_csv(listed)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"{len(listed)} firms written to {args.output}")
        else:
            sys.stdout.write(text)
        return 0
    table = Table("credit code", "name", title=f"{len(listed)} key enterprises at {at:%Y-%m-%d %H:%M} UTC")
    for code, name in listed:
        table.add_row(code, name)
    Console().print(table)
    return 0


def read_keyring(settings: Settings, refused: list[tuple[str, str]] | None = None) -> Keyring:
    """The keys topic, read whole as the worker reads it at start (a record it dead-letters, one the
    pinned root did not sign, is not on the ring: into `refused`, (kid, why)), with the private keys
    of GC_KEY_DIR."""
    from .worker.reference import read_whole_topics

    ring = Keyring(KeyDir(settings.keys_path).signer, root=pinned_root(settings)[0])

    def apply(topic: str, partition: int, m) -> None:
        try:
            ring.apply(ring.take(load_object(m.value), timestamp_ms=m.timestamp))
        except ValueError as exc:
            if refused is not None:
                kid = (orjson.loads(m.value) if m.value and m.value[:1] == b"{" else {}).get("kid")
                refused.append((str(kid), str(exc)))

    asyncio.run(read_whole_topics(settings.connection, [Topics.with_prefix(settings.topic_prefix).keys], apply))
    return ring


def _root_key(settings: Settings, path: Path | None) -> Ed25519PrivateKey:
    """The root's private key: --root-key, else the development root beside the pinned public key."""
    if path is None:
        private = pinned_root(settings, create=True)[1]
        if private is None:
            raise EntryError(
                f"no root private key beside {settings.root_public_path}: give --root-key FILE (the offline root)"
            )
        return private
    try:
        return load_root_private(path)
    except (OSError, ValueError) as exc:
        raise EntryError(f"--root-key {path}: {exc}") from None


def cmd_keys(settings: Settings, args) -> int:
    command = args.keys_command
    key_dir = KeyDir(settings.keys_path)
    if command is None:  # `greenchannel keys`, as before the ring: the first key pair
        first = key_dir.first()
        if first is None:
            err.print(f"[red]{settings.keys_path} holds rotated keys but not the ring's first key[/red]")
            return 1
        print(f"{settings.keys_path / PUBLIC_NAME} (key id {first.key_id})")
        return 0
    if command == "root":
        return _root_init(args.out, print_seed=args.print_seed)
    try:
        at = _when(args.at)
        if command == "rotate":
            return _rotate(settings, key_dir, at, args)
        if command == "withdraw":
            return _withdraw(settings, args.kid, at, _root_key(settings, args.root_key))
    except EntryError as exc:
        err.print(f"[red]not sent: {exc}[/red]")
        return 1
    refused: list[tuple[str, str]] = []
    _print_keyring(read_keyring(settings, refused), at)
    for kid, why in refused:
        err.print(f"[red]refused record of key {kid}: {why}[/red]")
    return 0


def _root_init(out: Path, *, print_seed: bool) -> int:
    if (out / "root.key").exists():
        err.print(f"[red]{out / 'root.key'} exists: a root is never overwritten[/red]")
        return 1
    key = root_init(out)
    print(
        f"root {key_id(key.public_key())}: {out / 'root.key'} (keep offline, backed up) and {out / 'root.pub'} "
        "(pin it: GC_ROOT_PUBLIC_KEY on every worker and station)"
    )
    if print_seed:
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        print(f"seed (32 bytes, hex; write it down, keep it in two safes): {raw.hex()}")
    return 0


def _rotate(settings: Settings, key_dir: KeyDir, at: datetime, args) -> int:
    topic = Topics.with_prefix(settings.topic_prefix).keys
    root = _root_key(settings, args.root_key)
    not_after = _when(args.not_after) if args.not_after else at + timedelta(days=args.days)
    prefixes = tuple(args.prefix) or NATIONAL
    try:  # checked before a key is made
        key_entry(root.public_key(), ACTIVE, at=at, root=root, prefixes=prefixes, not_after=not_after)
    except Unparseable as exc:
        raise EntryError(str(exc)) from None
    signer = key_dir.new_key()  # the private key is on disk before any worker can be asked to sign with it
    entry = key_entry(signer.public_key, ACTIVE, at=at, root=root, prefixes=prefixes, not_after=not_after)
    (key_dir.path / f"{signer.key_id}.record.json").write_bytes(orjson.dumps(entry, option=orjson.OPT_INDENT_2))
    asyncio.run(publish(settings, topic, [(signer.key_id, entry)]))
    _sent(topic, entry)
    print(
        f"new key {signer.key_id}: passes of {','.join(prefixes)} decided from {format_time(at)} until "
        f"{format_time(not_after)} are signed with it. Its private key is "
        f"{key_dir.path / (signer.key_id + '.key')}: every worker's GC_KEY_DIR needs it by then (a worker "
        "without it rejects those requests, no_signing_key)"
    )
    return 0


def _withdraw(settings: Settings, kid: str, at: datetime, root: Ed25519PrivateKey) -> int:
    topic = Topics.with_prefix(settings.topic_prefix).keys
    ring = read_keyring(settings)
    entry = key_withdrawal(ring, kid, at=at, root=root)
    asyncio.run(publish(settings, topic, [(entry["kid"], entry)]))
    _sent(topic, entry)
    ring.apply(parse_key_entry(entry, root.public_key()))
    print(
        f"from {format_time(at)} tokens of key {entry['kid']} are held at every scan (key_withdrawn); its active "
        f"passes get new tokens signed by {ring.signing_kid(at)} (status events, reason token_reissued)"
    )
    return 0


def _print_keyring(ring: Keyring, at: datetime) -> None:
    table = Table(
        "kid",
        "active from",
        "not after",
        "prefixes",
        "withdrawn from",
        "status",
        "signs",
        "private key here",
        title=f"{len(ring)} pass-signing keys at {at:%Y-%m-%d %H:%M} UTC, each record signed by root "
        f"{key_id(ring.root) if ring.root else '(none pinned)'} (records it did not sign are listed below, refused)",
    )
    for row in ring.rows(at):
        table.add_row(
            row["kid"],
            row["active_from"] or "—",
            row["not_after"] or "",
            "any (a key file)" if row["prefixes"] is None else ",".join(row["prefixes"]),
            row["withdrawn_from"] or "",
            row["status"],
            "✓" if row["signs"] else "",
            "yes" if row["private_key_here"] else "no",
        )
    Console(width=160).print(table)


def _import(settings: Settings, path: Path, *, dry_run: bool, at: datetime) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EntryError(f"{path}: {exc}") from None
    rows = read_enterprise_csv(text, at=at)
    for line, why in rows.bad:
        err.print(f"[red]{path}:{line}: {why}[/red]")
    topic = Topics.with_prefix(settings.topic_prefix).enterprises
    if rows.good and not dry_run:
        asyncio.run(
            publish(
                settings, topic, [(e["credit_code"], e) for _, e in rows.good], progress=len(rows.good) >= PROGRESS_FROM
            )
        )
    verb = "would send" if dry_run else "sent"
    print(
        f"{verb} {len(rows.good)} firm{'' if len(rows.good) == 1 else 's'} to {topic}; {len(rows.bad)} bad rows"
        + (f" (lines {', '.join(str(line) for line, _ in rows.bad)})" if rows.bad else "")
    )
    for line, entry in rows.good[:5] if len(rows.good) > 5 else rows.good:
        print(f"  line {line}: {entry['credit_code']} {entry['name']}")
    if len(rows.good) > 5:
        print(f"  … and {len(rows.good) - 5} more")
    return 1 if rows.bad else 0
