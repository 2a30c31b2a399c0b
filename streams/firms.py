"""`greenchannel request submit`: a firm sends shipment requests and reads back the decisions.

Each request is checked against the published JSON Schema (`schemas/ShipmentRequest.schema.json`)
before anything is sent, so a field error shows at once; the valid ones are published keyed by
shipment id, and the decisions are read from `gc.pass.decisions` (keyed the same way, so each
lands on its request's partition) from where that topic ended before sending. Exit 0 when every
request was approved, 1 when any was rejected, 2 for invalid input or no answer in time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from jsonschema import Draft202012Validator, FormatChecker
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from models.credential import SALT_BYTES, DriverBinding, normalise_id_number
from models.passes import kafka_partition
from models.records import check_id_number
from routing import Gazetteer

from .handlers import Topics
from .settings import Settings

__all__ = ["add_arguments", "cmd_request", "schema_errors", "schema_fields", "Submission"]

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "ShipmentRequest.schema.json"
APPROVED, REJECTED, INVALID = 0, 1, 2
out, err = Console(), Console(stderr=True)


def add_arguments(sub) -> None:
    request = sub.add_parser("request", help="firms: send shipment requests").add_subparsers(
        dest="request_command", required=True
    )
    submit = request.add_parser("submit", help="send a request and wait for its decision")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a ShipmentRequest JSON file, or - for standard input")
    source.add_argument("--batch", metavar="FILE.jsonl", type=Path, help="one request per line")
    submit.add_argument(
        "--driver-id",
        metavar="ID_NUMBER",
        help="the driver's ID number, bound to the pass as a salted hash (default: the request's "
        "driver.id_number); the ID number itself is never sent",
    )
    submit.add_argument(
        "--wait", type=float, default=30.0, metavar="SECONDS", help="how long to wait for the decisions (default 30)"
    )


def schema_errors(request) -> list[str]:
    """What the published schema says is wrong with `request` (empty when valid), one line each."""
    return [f"{f['field']}: {f['message']}" for f in schema_fields(request)]


def schema_fields(request) -> list[dict]:
    """Each problem the published schema finds, at its field's path (a missing field at its own):
    the gateway's field errors and the lines of `request submit`."""
    fields = []
    for e in sorted(request_validator().iter_errors(request), key=lambda e: list(map(str, e.absolute_path))):
        path = [str(p) for p in e.absolute_path]
        if e.validator == "required" and isinstance(e.validator_value, list) and isinstance(e.instance, dict):
            path += [f for f in e.validator_value if f not in e.instance][:1]
        fields.append({"field": ".".join(path) or "(request)", "message": e.message})
    return fields


@functools.cache
def request_validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA.read_text()), format_checker=FormatChecker())


@dataclass(slots=True)
class Submission:
    requests: dict[str, dict] = field(default_factory=dict)  # shipment id -> request
    invalid: list[tuple[str, list[str]]] = field(default_factory=list)  # (where, errors)
    decisions: dict[str, dict] = field(default_factory=dict)


def read_requests(text: str, *, lines: bool, where: str) -> Submission:
    """Requests from JSON text (one, or one per line), each validated against the schema."""
    sub = Submission()
    items = (
        [(f"{where}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if lines
        else [(where, text)]
    )
    for place, raw in items:
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            sub.invalid.append((place, [f"not JSON: {exc}"]))
            continue
        problems = schema_errors(request)
        if not problems and request["shipment_id"] in sub.requests:
            problems = [f"shipment_id {request['shipment_id']} repeats an earlier line"]
        if problems:
            sub.invalid.append((place, problems))
        else:
            sub.requests[request["shipment_id"]] = request
    return sub


def bind_driver(request: dict, id_number: str | None = None) -> str | None:
    """Replace the request's driver ID number (or `id_number`) by its binding, a salted hash computed
    here: the ID number never leaves this machine. Why it cannot be bound, else None."""
    driver = request.get("driver") or {}
    given = id_number or driver.get("id_number")
    if given is None:
        return None if "binding" in driver else "driver: give the driver's ID number (--driver-id)"
    try:
        number = normalise_id_number(given)
    except ValueError as exc:
        return f"driver ID number: {exc}"
    if problem := check_id_number(number):
        return f"driver ID number {problem}"
    binding = DriverBinding.of(number, os.urandom(SALT_BYTES))
    request["driver"] = {**{k: v for k, v in driver.items() if k != "id_number"}, "binding": binding.to_wire()}
    return None


def bind_drivers(sub: Submission, id_number: str | None) -> None:
    """Bind the driver of every request (`bind_driver`); a request that cannot be is not sent."""
    if id_number and len(sub.requests) > 1:
        sub.invalid.append(("--driver-id", ["one driver ID for a whole batch: give each request its own"]))
        sub.requests.clear()
        return
    for sid, request in list(sub.requests.items()):
        if problem := bind_driver(request, id_number):
            sub.invalid.append((sid, [problem]))
            del sub.requests[sid]


async def exchange(settings: Settings, sub: Submission, *, wait: float, progress: bool = False) -> None:
    """Publish the requests and collect their decisions until all are in or `wait` runs out."""
    topics = Topics.with_prefix(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        **settings.connection.kwargs(), enable_auto_commit=False, isolation_level=settings.isolation_level
    )
    producer = AIOKafkaProducer(**settings.connection.kwargs(), linger_ms=5, acks="all")
    await consumer.start()
    await producer.start()
    try:
        parts = sorted(
            {
                TopicPartition(topics.decisions, kafka_partition(sid.encode(), settings.partitions))
                for sid in sub.requests
            }
        )
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)  # before sending: the answers come after these
        for tp, end in ends.items():
            consumer.seek(tp, end)
        with Progress(console=err, disable=not progress, transient=True) as bar:
            sending = bar.add_task("sending", total=len(sub.requests))
            for sid, request in sub.requests.items():
                await producer.send(topics.requests, orjson.dumps(request), key=sid.encode())
                bar.advance(sending)
            await producer.flush()
            answered = bar.add_task("decisions", total=len(sub.requests))
            deadline = time.monotonic() + wait
            while len(sub.decisions) < len(sub.requests) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        sid = r.key.decode("utf-8", "replace") if r.key else None
                        if sid in sub.requests and sid not in sub.decisions:
                            sub.decisions[sid] = orjson.loads(r.value)
                            bar.advance(answered)
    finally:
        await producer.stop()
        await consumer.stop()


def describe(decision: dict, gazetteer: Gazetteer) -> list[str]:
    """A decision in plain words: outcome, pass, class, route, validity and each reason."""
    lines = [
        f"{decision['shipment_id']}: {decision['decision'].upper()}"
        + (f", class {decision['priority']}" if decision.get("priority") else "")
    ]
    p = decision.get("pass")
    if p:
        route = p["route"]
        names = [gazetteer.region_name(code) or code for code in route["adcodes"]]
        lines += [
            f"  pass number {p['pass_id']} for {p['plate']} ({p['trip']} trip"
            + (", toll exempt" if p.get("toll_exempt") else "")
            + ")",
            f"  valid {p['valid_from']} to {p['valid_until']}",
            f"  route {' → '.join(names)}: {route['distance_km']} km, arriving about {route['eta']}",
            f"  checkpoints: {', '.join(c['checkpoint_id'] for c in route['checkpoints'])}",
        ]
    for reason in decision.get("reasons", ()):
        lines.append(f"  - {reason['text']}")
    return lines


def verdict(sub: Submission) -> int:
    if sub.invalid or len(sub.decisions) < len(sub.requests):
        return INVALID
    return REJECTED if any(d["decision"] != "approved" for d in sub.decisions.values()) else APPROVED


def cmd_request(settings: Settings, args) -> int:
    if args.batch:
        try:
            text = args.batch.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]{args.batch}: {exc}[/red]")
            return INVALID
        sub = read_requests(text, lines=True, where=str(args.batch))
    else:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]{args.file}: {exc}[/red]")
            return INVALID
        sub = read_requests(text, lines=False, where="standard input" if args.file == "-" else args.file)
    bind_drivers(sub, args.driver_id)
    for where, problems in sub.invalid:
        err.print(f"[red]{where}: not sent, it does not match the ShipmentRequest schema:[/red]")
        for problem in problems:
            err.print(f"  {problem}")
    if sub.requests:
        asyncio.run(exchange(settings, sub, wait=args.wait, progress=bool(args.batch)))
    report(sub, batch=bool(args.batch), wait=args.wait)
    return verdict(sub)


def report(sub: Submission, *, batch: bool, wait: float) -> None:
    gazetteer = Gazetteer.default()
    missing = [sid for sid in sub.requests if sid not in sub.decisions]
    if not batch:
        for decision in sub.decisions.values():
            out.print("\n".join(describe(decision, gazetteer)), highlight=False)
    else:
        counts = Counter((d["decision"], d.get("priority") or "—") for d in sub.decisions.values())
        table = Table("decision", "class", "requests", title=f"{len(sub.requests)} requests sent")
        for (decision, cls), n in sorted(counts.items()):
            table.add_row(decision, cls, str(n))
        if missing:
            table.add_row("no answer", "—", str(len(missing)))
        if sub.invalid:
            table.add_row("invalid, not sent", "—", str(len(sub.invalid)))
        out.print(table)
        reasons = Counter(
            code
            for d in sub.decisions.values()
            if d["decision"] != "approved"
            for code in {r["code"] for r in d["reasons"]}
        )  # requests rejected for each
        if reasons:
            out.print("rejections by reason: " + ", ".join(f"{code} {n}" for code, n in reasons.most_common()))
    for sid in missing:
        err.print(f"[red]{sid}: no decision within {wait:g} s (is the worker running?)[/red]")
