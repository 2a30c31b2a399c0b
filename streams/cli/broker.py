"""`greenchannel broker`: a local Kafka-protocol broker (embedded Tansu or Apache Kafka) until stopped."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

__all__ = ["add_arguments", "COMMANDS", "wait_for_stop"]


def add_arguments(sub) -> None:
    broker = sub.add_parser("broker", help="run a local Kafka-protocol broker until stopped")
    broker.add_argument("--kind", choices=["tansu", "kafka"], default="tansu")
    broker.add_argument("--nodes", type=int, default=1, help="Apache Kafka nodes (kind kafka)")
    broker.add_argument("--port", type=int, default=9092, help="node 0's port (0: any free one; default 9092)")
    broker.add_argument(
        "--secure",
        action="store_true",
        help="Apache Kafka with SASL_SSL (SCRAM-SHA-512) and ACLs; prints where the clients' files are",
    )
    broker.add_argument(
        "--secure-dir",
        type=Path,
        default=None,
        help="certificates, credentials and client files (default: GC_DATA_DIR/secure)",
    )
    broker.add_argument(
        "--principal",
        action="append",
        default=[],
        metavar="NAME",
        help="one more principal, e.g. firm-acme or checkpoint-zj (repeat for several)",
    )


def wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_broker(settings, args) -> int:
    if args.secure and args.kind != "kafka":
        raise SystemExit(
            "--secure needs --kind kafka: the embedded Tansu is a loopback development broker without authentication"
        )
    if args.kind == "kafka":
        broker = kafka_cluster(settings, args)
    else:
        from ..dev.broker import TansuBroker

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


def kafka_cluster(settings, args):
    """An Apache Kafka cluster of `args.nodes` nodes, with SASL_SSL and the ACL table if `args.secure`."""
    from ..dev.kafka import KafkaCluster

    secure, acls = None, None
    if args.secure:
        from ..dev.secure import SecureDir, SecureSetupError
        from ..dev.secure import acls as acl_table

        try:
            secure = SecureDir(args.secure_dir or settings.data_dir / "secure").ensure(tuple(args.principal))
            acls = acl_table(secure.principals(), settings.topic_prefix, settings.app_id)
        except SecureSetupError as exc:
            raise SystemExit(str(exc)) from None
    return KafkaCluster(nodes=args.nodes, port=args.port or None, secure=secure, acls=acls)


def secure_topics(broker, settings) -> None:
    """On a secure cluster the admin makes the public topics (no other principal may), then says
    where each principal's client files are."""
    from ..handlers import Topics
    from ..topics import ensure_topics

    topics = Topics.with_prefix(settings.topic_prefix)
    asyncio.run(
        ensure_topics(
            broker.connection,
            topics.public() + [topics.pass_events],
            partitions=settings.partitions,
            replication_factor=min(3, broker.nodes),
        )
    )
    clients = broker.secure.path / "clients"
    print(
        f"client settings, one file per principal, in {clients.resolve()}/: "
        + ", ".join(p + ".env" for p in broker.secure.principals())
        + " (set -a; . FILE), and beside them .properties (Kafka's tools) and .kcat.conf (kcat -F)",
        flush=True,
    )


COMMANDS = {"broker": cmd_broker}
