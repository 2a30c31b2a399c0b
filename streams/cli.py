"""The `greenchannel` command: broker, worker, projector, topics, checkpoint, demo, pass, replay, db, keys,
risk, enterprises, request, dashboard."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greenchannel", description="Green logistics channel coordination")
    sub = parser.add_subparsers(dest="command", required=True)

    broker = sub.add_parser("broker", help="run a local Kafka-protocol broker until stopped")
    broker.add_argument("--kind", choices=["tansu", "kafka"], default="tansu")
    broker.add_argument("--nodes", type=int, default=1, help="Apache Kafka nodes (kind kafka)")
    broker.add_argument("--port", type=int, default=9092, help="node 0's port (0: any free one; default 9092)")
    broker.add_argument("--secure", action="store_true",
                        help="Apache Kafka with SASL_SSL (SCRAM-SHA-512) and ACLs; prints where the clients' files are")
    broker.add_argument("--secure-dir", type=Path, default=None,
                        help="certificates, credentials and client files (default: GC_DATA_DIR/secure)")
    broker.add_argument("--principal", action="append", default=[], metavar="NAME",
                        help="one more principal, e.g. firm-acme or checkpoint-zj (repeat for several)")

    sub.add_parser("worker", help="run the stream worker against GC_BROKER_URL")
    projector = sub.add_parser("projector", help="project decisions, statuses, risk and enterprises into "
                                                 "GC_DATABASE_URL (a consumer group: run as many as needed)")
    projector.add_argument("--batch-size", type=int, default=5000, help="most records per transaction (default 5000)")
    sub.add_parser("topics", help="create the topics at GC_BROKER_URL")

    station = sub.add_parser("checkpoint", help="a checkpoint station: verifies passes offline, records scans, "
                                                "serves its page")
    station.add_argument("--id", dest="ids", action="append", required=True, metavar="CHECKPOINT_ID",
                         help="a checkpoint this station is (repeat for a few)")
    station.add_argument("--port", type=int, default=8077, help="the page's port (0: any free one)")
    station.add_argument("--host", default="127.0.0.1", help="bind address; beyond loopback --token is needed")
    station.add_argument("--token", help="the page's access token (or GC_STATION_TOKEN)")
    station.add_argument("--public-key", action="append", type=Path, default=[], metavar="PATH",
                         help="a public key file or a folder of *.pub (default: GC_KEY_DIR); repeat for several")
    station.add_argument("--clock", help="the station's time now, RFC 3339 (a replayed day, as in the demo)")

    demo = sub.add_parser("demo", help="broker, worker and a simulator of firms and checkpoints")
    demo.add_argument("--shipments", type=int, default=300)
    demo.add_argument("--seed", type=int, default=2020)
    demo.add_argument("--broker-url", help="use this broker instead of starting the embedded one")
    demo.add_argument("--serve", action="store_true",
                      help="after the report, keep the broker, worker, projector and pages running until Ctrl-C")

    passes = sub.add_parser("pass", help="look at passes in the database")
    pass_sub = passes.add_subparsers(dest="pass_command", required=True)
    show = pass_sub.add_parser("show", help="a pass with its history")
    show.add_argument("pass_id")
    printed = pass_sub.add_parser("print", help="the driver's pass: a printable PNG or PDF with its QR code")
    printed.add_argument("pass_id")
    out = printed.add_mutually_exclusive_group()
    out.add_argument("--png", metavar="FILE", type=Path)
    out.add_argument("--pdf", metavar="FILE", type=Path)
    printed.add_argument("--from-decision", metavar="FILE", type=Path,
                         help="read the pass from this decision JSON instead of the database")
    history = pass_sub.add_parser("history", help="a pass's full story from the log (not the database)")
    history.add_argument("pass_id")
    history.add_argument("--json", metavar="FILE", help="also write the story as JSON (FILE or '-')")

    replay = sub.add_parser("replay", help="re-decide the logged inputs and prove every recorded decision")
    from .replay import add_arguments as add_replay_arguments
    add_replay_arguments(replay)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="bring the schema at GC_DATABASE_URL up to date")


    from .firms import add_arguments as add_request_arguments
    from .operators import add_arguments as add_operator_arguments
    add_operator_arguments(sub)
    add_request_arguments(sub)
    dashboard = sub.add_parser("dashboard", help="the operators' live page: map, checkpoints, flow, search")
    dashboard.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; beyond it "
                                                               "a token is required)")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--token", help="required on every request when bound beyond loopback "
                                           "(default: GC_DASHBOARD_TOKEN)")
    return parser


def wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_broker(args, settings) -> int:
    if args.secure and args.kind != "kafka":
        raise SystemExit("--secure needs --kind kafka: the embedded Tansu is a loopback development broker "
                         "without authentication")
    if args.kind == "kafka":
        from .kafka import KafkaCluster
        secure, acls = None, None
        if args.secure:
            from .secure import SecureDir, SecureSetupError
            from .secure import acls as acl_table
            try:
                secure = SecureDir(args.secure_dir or settings.data_dir / "secure").ensure(tuple(args.principal))
                acls = acl_table(secure.principals(), settings.topic_prefix, settings.app_id)
            except SecureSetupError as exc:
                raise SystemExit(str(exc)) from None
        broker = KafkaCluster(nodes=args.nodes, port=args.port or None, secure=secure, acls=acls)
    else:
        from .broker import TansuBroker
        broker = TansuBroker(args.port)
    broker.start()
    try:
        if args.kind == "kafka" and args.secure:
            secure_topics(broker, settings)
        print(f"broker ready at {broker.url}", flush=True)
        wait_for_stop()
    finally:
        broker.stop()
    return 0


def secure_topics(broker, settings) -> None:
    """On a secure cluster the admin makes the public topics (no other principal may), then says
    where each principal's client files are."""
    from .broker import ensure_topics
    from .handlers import Topics
    topics = Topics.with_prefix(settings.topic_prefix)
    asyncio.run(ensure_topics(broker.connection, topics.public() + [topics.pass_events],
                              partitions=settings.partitions, replication_factor=min(3, broker.nodes)))
    clients = broker.secure.path / "clients"
    print(f"client settings, one file per principal, in {clients.resolve()}/: "
          + ", ".join(p + ".env" for p in broker.secure.principals())
          + " (set -a; . FILE), and beside them .properties (Kafka's tools) and .kcat.conf (kcat -F)", flush=True)


def cmd_topics(settings) -> None:
    from .broker import ensure_topics
    from .handlers import Topics
    topics = Topics.with_prefix(settings.topic_prefix)
    counts = asyncio.run(ensure_topics(settings.connection, topics.public() + [topics.pass_events],
                                       partitions=settings.partitions, replication_factor=settings.replication_factor))
    # Pass numbers are allocated per partition of the requests topic (models.passes.allocate_pass_id)
    # and broadcasts go to every partition: the count the worker computes with must be the topics'.
    wrong = {name: n for name, n in counts.items() if n != settings.partitions}
    if wrong:
        raise SystemExit(f"GC_PARTITIONS={settings.partitions}, but the topics have other partition counts: "
                         + ", ".join(f"{name} {n}" for name, n in sorted(wrong.items()))
                         + ". Set GC_PARTITIONS to the topics' count (pass numbers are allocated per partition).")


def cmd_worker(settings) -> int:
    from faust.worker import Worker
    from mode.loop import use as use_event_loop

    from .app import create_app
    use_event_loop(settings.event_loop)  # before anything asks for the loop
    cmd_topics(settings)
    from .handlers import Topics
    from .keys import KeyDir, publish_public_key
    # The ring's first key (active since ever; made on the first run): stations take the keys from the
    # topic (they also accept files), so verifying needs no key copying. Rotated keys are on the
    # topic already, with their times.
    first = KeyDir(settings.keys_path).first()
    if first is not None:
        asyncio.run(publish_public_key(settings.connection, Topics.with_prefix(settings.topic_prefix).keys, first))
    app = create_app(settings)
    worker = Worker(app, loglevel="warning", quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG so it can tick on every record: every
    # per-message debug call in Faust and aiokafka then builds a LogRecord (~10% of worker CPU).
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_pass_show(settings, pass_id: str) -> int:
    from rich.console import Console
    from rich.table import Table
    from sqlmodel import Session

    from models.store.db import get_pass, get_pass_events, make_engine

    console = Console()
    with Session(make_engine(settings.database_url)) as session:
        found = get_pass(session, pass_id=pass_id)
        if found is None:
            console.print(f"[red]no pass {pass_id} in {settings.database_url}[/red]")
            return 1
        console.print(f"[bold]Pass {found.pass_id}[/bold]  shipment {found.shipment_id}  plate {found.plate}  "
                      f"priority {found.priority}  status [bold]{found.status}[/bold]")
        console.print(f"valid {found.valid_from} → {found.valid_until}  trip {found.trip}  "
                      f"toll exempt {found.toll_exempt}")
        if found.route:
            console.print("route: " + " → ".join(found.route["adcodes"]) + f"  ({found.route['distance_km']} km)")
        table = Table("at", "status", "checkpoint", "reason", "dwell s")
        for e in get_pass_events(session, pass_id=pass_id):
            dwell = "" if e.dwell_seconds is None else f"{e.dwell_seconds:.0f}" + (" ⚠" if e.dwell_exceeded else "")
            table.add_row(str(e.at), e.status, e.checkpoint_id or "", e.reason or "", dwell)
        console.print(table)
    return 0


def cmd_checkpoint(settings, args) -> int:
    import os

    from models.records import parse_time

    from .station_web import run_station
    clock = parse_time(args.clock) if args.clock else None
    return run_station(settings, args.ids, host=args.host, port=args.port,
                       token=args.token or os.environ.get("GC_STATION_TOKEN"),
                       key_paths=args.public_key or [settings.keys_path], clock_start=clock)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .connection import ConnectionSettingsError
    from .settings import get_settings
    try:
        return run(args, get_settings())
    except ConnectionSettingsError as exc:  # a missing password, an unreadable CA or password file
        print(f"greenchannel: {exc}", file=sys.stderr)
        return 2


def run(args, settings) -> int:
    if args.command == "broker":
        return cmd_broker(args, settings)
    if args.command == "worker":
        return cmd_worker(settings)
    if args.command == "projector":
        from .projector import run_projector
        return run_projector(settings, batch_size=args.batch_size)
    if args.command == "topics":
        cmd_topics(settings)
        return 0
    if args.command == "checkpoint":
        return cmd_checkpoint(settings, args)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(settings, shipments=args.shipments, seed=args.seed, broker_url=args.broker_url,
                        serve=args.serve)
    if args.command == "pass":
        if args.pass_command == "print":
            from .pass_print import cmd_pass_print
            return cmd_pass_print(settings, args)
        if args.pass_command == "history":
            from .replay import cmd_pass_history
            return cmd_pass_history(settings, args)
        return cmd_pass_show(settings, args.pass_id)
    if args.command == "replay":
        from .replay import cmd_replay
        return cmd_replay(settings, args)
    if args.command == "db":
        from sqlalchemy.engine import make_url

        from models.store.db import upgrade
        upgrade(settings.database_url)  # alembic upgrade head, under the migration lock
        print(f"schema up to date at {make_url(settings.database_url).render_as_string(hide_password=True)}")
        return 0
    if args.command == "risk":
        from .operators import cmd_risk
        return cmd_risk(settings, args)
    if args.command == "enterprises":
        from .operators import cmd_enterprises
        return cmd_enterprises(settings, args)
    if args.command == "request":
        from .firms import cmd_request
        return cmd_request(settings, args)
    if args.command == "dashboard":
        from .dashboard import cmd_dashboard
        return cmd_dashboard(settings, args)
    if args.command == "keys":
        from .operators import cmd_keys
        return cmd_keys(settings, args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
