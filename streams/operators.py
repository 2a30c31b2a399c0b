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
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.keyring import ACTIVE, Keyring, key_entry, parse_key_entry
from models.operators import (
    EntryError,
    enterprise_csv,
    enterprise_entry,
    key_withdrawal,
    read_enterprise_csv,
    risk_entry,
)
from models.records import RISK_LEVELS, format_time, load_object, parse_enterprise, parse_risk, parse_time
from models.reference import EnterpriseBook, RiskBook
from routing import Gazetteer

from .handlers import Topics
from .keys import PUBLIC_NAME, KeyDir
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
        "rotate", help="a new signing key into GC_KEY_DIR, published active: new passes are signed with it"
    )
    withdraw = key_sub.add_parser(
        "withdraw",
        help="mark a key compromised: its tokens are held at the next scan, "
        "its active passes reissued with the key in force",
    )
    withdraw.add_argument("kid")
    listing = key_sub.add_parser("list", help="the ring and each key's status (read from the topic)")
    for p, when in ((rotate, "it takes effect"), (withdraw, "it takes effect"), (listing, "of the statuses")):
        p.add_argument("--at", metavar="TIME", help=f"RFC 3339 time {when} (default: now)")


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


def read_keyring(settings: Settings) -> Keyring:
    """The keys topic, read whole as the worker reads it at start (a record it dead-letters is not
    on the ring), with the private keys of GC_KEY_DIR."""
    from .worker.reference import read_whole_topics

    ring = Keyring(KeyDir(settings.keys_path).signer)

    def apply(topic: str, partition: int, m) -> None:
        try:
            ring.apply(parse_key_entry(load_object(m.value), timestamp_ms=m.timestamp))
        except ValueError:
            pass

    asyncio.run(read_whole_topics(settings.connection, [Topics.with_prefix(settings.topic_prefix).keys], apply))
    return ring


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
    try:
        at = _when(args.at)
        if command == "rotate":
            return _rotate(settings, key_dir, at)
        if command == "withdraw":
            return _withdraw(settings, args.kid, at)
    except EntryError as exc:
        err.print(f"[red]not sent: {exc}[/red]")
        return 1
    _print_keyring(read_keyring(settings), at)
    return 0


def _rotate(settings: Settings, key_dir: KeyDir, at: datetime) -> int:
    topic = Topics.with_prefix(settings.topic_prefix).keys
    signer = key_dir.new_key()  # the private key is on disk before any worker can be asked to sign with it
    entry = key_entry(signer.public_key, ACTIVE, at=at)
    asyncio.run(publish(settings, topic, [(signer.key_id, entry)]))
    _sent(topic, entry)
    print(
        f"new key {signer.key_id}: passes decided from {format_time(at)} are signed with it. Its private key is "
        f"{key_dir.path / (signer.key_id + '.key')}: every worker's GC_KEY_DIR needs it by then (a worker "
        "without it waits for it)"
    )
    return 0


def _withdraw(settings: Settings, kid: str, at: datetime) -> int:
    topic = Topics.with_prefix(settings.topic_prefix).keys
    ring = read_keyring(settings)
    entry = key_withdrawal(ring, kid, at=at)
    asyncio.run(publish(settings, topic, [(entry["kid"], entry)]))
    _sent(topic, entry)
    ring.apply(parse_key_entry(entry))
    print(
        f"from {format_time(at)} tokens of key {entry['kid']} are held at every scan (key_withdrawn); its active "
        f"passes get new tokens signed by {ring.signing_kid(at)} (status events, reason token_reissued)"
    )
    return 0


def _print_keyring(ring: Keyring, at: datetime) -> None:
    table = Table(
        "kid",
        "active from",
        "withdrawn from",
        "status",
        "signs",
        "private key here",
        title=f"{len(ring)} pass-signing keys at {at:%Y-%m-%d %H:%M} UTC",
    )
    for row in ring.rows(at):
        table.add_row(
            row["kid"],
            row["active_from"] or "—",
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
