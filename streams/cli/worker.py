"""`greenchannel worker`, `projector` and `topics`: the stream worker, the database projector and the
topics they need."""

from __future__ import annotations

import asyncio
import sys

__all__ = ["add_arguments", "COMMANDS", "make_topics"]


def add_arguments(sub) -> None:
    sub.add_parser("worker", help="run the stream worker against GC_BROKER_URL")
    projector = sub.add_parser(
        "projector",
        help="project decisions, statuses, risk and enterprises into "
        "GC_DATABASE_URL (a consumer group: run as many as needed)",
    )
    projector.add_argument("--batch-size", type=int, default=5000, help="most records per transaction (default 5000)")
    sub.add_parser("topics", help="create the topics at GC_BROKER_URL")


def make_topics(settings) -> None:
    """Create the topics at GC_BROKER_URL; exit if existing ones have another partition count."""
    from ..handlers import Topics
    from ..topics import ensure_topics

    topics = Topics.with_prefix(settings.topic_prefix)
    counts = asyncio.run(
        ensure_topics(
            settings.connection,
            topics.public() + [topics.pass_events],
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
        )
    )
    # Pass numbers are allocated per partition of the requests topic (models.passes.allocate_pass_id)
    # and broadcasts go to every partition: the count the worker computes with must be the topics'.
    wrong = {name: n for name, n in counts.items() if n != settings.partitions}
    if wrong:
        raise SystemExit(
            f"GC_PARTITIONS={settings.partitions}, but the topics have other partition counts: "
            + ", ".join(f"{name} {n}" for name, n in sorted(wrong.items()))
            + ". Set GC_PARTITIONS to the topics' count (pass numbers are allocated per partition)."
        )


def cmd_topics(settings, args) -> int:
    make_topics(settings)
    return 0


def cmd_worker(settings, args) -> int:
    from faust.worker import Worker
    from mode.loop import use as use_event_loop

    from ..worker.app import create_app

    use_event_loop(settings.event_loop)  # before anything asks for the loop
    make_topics(settings)
    from ..handlers import Topics
    from ..keys import KeyDir, pinned_root, publish_public_key

    # The ring's first key (active since ever; made on the first run), in its root-signed record:
    # stations take the keys from the topic (they also accept files), so verifying needs no key
    # copying. Rotated keys are on the topic already, with their times.
    root, root_private = pinned_root(settings, create=True)
    record = KeyDir(settings.keys_path).first_record(root, root_private)
    if record is not None:
        asyncio.run(publish_public_key(settings.connection, Topics.with_prefix(settings.topic_prefix).keys, record))
    else:
        keys = Topics.with_prefix(settings.topic_prefix).keys
        print(
            f"no root-signed record of the first key in {settings.keys_path} (root: "
            f"{settings.root_public_path if root else 'none pinned'}): this worker signs only with keys whose "
            f"root-signed records are on {keys}; without one it rejects requests, no_signing_key",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(settings)
    worker = Worker(app, loglevel="warning", quiet=True)
    # Faust's terminal spinner sets the root logger to DEBUG so it can tick on every record: every
    # per-message debug call in Faust and aiokafka then builds a LogRecord (~10% of worker CPU).
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_projector(settings, args) -> int:
    from ..projector import run_projector

    return run_projector(settings, batch_size=args.batch_size)


COMMANDS = {"worker": cmd_worker, "projector": cmd_projector, "topics": cmd_topics}
