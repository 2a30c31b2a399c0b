"""The worker's topics and tables: raw bytes in and out, tables written straight to their stores.

Keys are ids (text), values the exact bytes published or stored: nothing to re-encode. Tables are
typed by key_type/value_type, not a Schema: those also pick the serializers the changelog is written
with (str: JSON, bytes: raw), so a restarted worker recovers what was stored. A pass's entries are
all on its partition: its request's, its scans' (streams.handlers). Tables are written straight to
their stores; the changelog records go out with the event's outputs (streams.worker.compat.DirectTable),
on the event's partition.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from ..handlers import PassHolders, Tables
from ..settings import Settings
from .compat import DirectTable, learn_partitions

__all__ = ["raw_topic", "open_tables", "forget_moved_partitions", "register_table_partitions"]

log = logging.getLogger("greenchannel")


def raw_topic(app: faust.App, settings: Settings, *topic_names: str) -> faust.TopicT:
    """A topic of raw bytes, keys and values, with the channel's partition count."""
    return app.topic(
        *topic_names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


def open_tables(app: faust.App, settings: Settings, changelog: list[tuple[str, bytes, bytes]]) -> Tables:
    """The pass, decision, answer, clock and applied-reference tables, their changelog records left in
    `changelog`."""

    def table(name: str) -> DirectTable:
        table = app.Table(
            name, key_type=str, value_type=bytes, partitions=settings.partitions, options=settings.table_options
        )
        return DirectTable(table, changelog)

    passes = table("passes")
    # Pass numbers held: read from the pass states (PassHolders), one changelog write fewer per approval.
    return Tables(
        decided=table("decided"),
        serials=PassHolders(passes),
        passes=passes,
        answers=table("answers"),
        clocks=table("clock"),
        applied=table("applied"),
    )


def forget_moved_partitions(app: faust.App, tables: Tables) -> None:
    """Drop the derived index of every partition revoked or newly assigned."""

    async def forget_moved(app, moved, **kwargs) -> None:
        """A revoked or newly assigned partition's table is recovered anew from the changelog
        before any of its events is processed: its derived index is rebuilt from that."""
        tables.forget({tp.partition for tp in moved})

    app.on_partitions_revoked.connect(forget_moved)
    app.on_partitions_assigned.connect(forget_moved)


def register_table_partitions(app: faust.App, passes: DirectTable) -> None:
    """The task making the pass view's `table_route` able to find the worker owning a pass."""

    @app.task
    async def learn_table_partitions() -> None:
        """`table_route` (the pass view) finds the worker owning a key from the partitions of the
        table's changelog in the main producer's metadata. Under exactly_once that producer never
        writes there (the transactional ones do), so unless asked it may not know the topic and
        the view fails (seen: HTTP 500, "'NoneType' object is not iterable")."""
        topic = passes.table.changelog_topic.get_topic_name()
        for attempt in range(10):
            try:
                await learn_partitions(app, topic)
                return
            except Exception as exc:  # noqa: BLE001 — the topic may not exist yet; try again
                log.warning("no metadata yet for %s (%s); retrying", topic, exc)
                await asyncio.sleep(1 + attempt)  # a retry backoff, not a synchronisation
