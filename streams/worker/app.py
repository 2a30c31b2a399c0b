"""The Faust application: app → topics → tables → agents, read top to bottom.

Agents are thin: each hands raw messages to `streams.handlers.Pipeline` and sends what it
returns. Values stay raw bytes end to end so a message Faust cannot decode still reaches
our parser, and from there the dead-letter topic, instead of killing the agent.
"""

from __future__ import annotations

import faust

from ..bootstrap import build_pipeline
from ..metrics import PrometheusMeter, new_registry
from ..settings import Settings
from . import agents
from .compat import (
    ask_highwaters,
    commit_transactions_concurrently,
    end_recovery_promptly,
    fetch_what_was_asked,
    keep_standby_tables,
    persist_recovered,
    recover_whole_beyond_the_end,
    seek_before_resume,
    set_fetch_wait,
    wipe_uncommitted_on_open,
)
from .runtime import Runtime
from .tables import forget_moved_partitions, open_tables, raw_topic, register_table_partitions
from .views import register_views

__all__ = ["create_app"]


def create_app(settings: Settings) -> faust.App:
    """The worker's app, its core built by `streams.bootstrap`, its agents, tasks and views registered."""
    seek_before_resume()  # a worker taking over a backlog processes each record once (streams.worker.compat)
    fetch_what_was_asked()  # nothing fetched is skipped unhandled (streams.worker.compat)
    ask_highwaters()  # a worker taking over recovers its tables whole under exactly_once (streams.worker.compat)
    set_fetch_wait(settings.fetch_wait_ms)
    keep_standby_tables()  # a standby's memory tables survive a rebalance: a takeover reads the tail (compat)
    end_recovery_promptly()  # exactly_once: a recovery ends ~2 s after its last record, not 10 s (compat)
    commit_transactions_concurrently()  # exactly_once: each transaction once its records are delivered (compat)
    wipe_uncommitted_on_open()  # exactly_once on RocksDB: no write of an aborted transaction survives (compat)
    recover_whole_beyond_the_end()  # RocksDB: a table ahead of its changelog is recovered anew, not a crash (compat)
    persist_recovered()  # RocksDB: a recovery's end is persisted, commit marker included (compat)
    app = faust.App(settings.app_id, **app_config(settings))
    pipeline = build_pipeline(settings)
    names = pipeline.topics
    app.pipeline = pipeline
    meter = pipeline.meter = PrometheusMeter(new_registry())

    # --- topics -------------------------------------------------------------------------------
    requests = raw_topic(app, settings, names.requests, names.gateway_requests)
    scans = raw_topic(app, settings, names.scans)
    reference = raw_topic(app, settings, names.risk, names.enterprises, names.keys)
    pass_events = raw_topic(app, settings, names.pass_events)

    # --- tables -------------------------------------------------------------------------------
    changelog: list[tuple[str, bytes, bytes]] = []
    tables = open_tables(app, settings, changelog)
    forget_moved_partitions(app, tables)
    runtime = Runtime(app, settings, pipeline, tables, meter, changelog)
    app.on_partitions_assigned.connect(runtime.gate.on_partitions_assigned)
    agents.register_reference_load(app, runtime)
    register_table_partitions(app, tables.passes)

    # --- agents -------------------------------------------------------------------------------
    agents.register_decide(app, runtime, requests)
    agents.register_scan(app, runtime, scans)
    agents.register_reference_data(app, runtime, reference)
    agents.register_track(app, runtime, pass_events)
    if settings.clock_seconds > 0:
        agents.register_clock(app, runtime, settings.clock_seconds)

    # --- web views and metrics ------------------------------------------------------------------
    register_views(app, runtime)
    agents.register_consumer_lag(app, runtime)
    return app


def app_config(settings: Settings) -> dict:
    """Faust's configuration of the worker: broker, store, partitions, guarantee (under exactly_once,
    how often its transactions commit), web server."""
    commits = {}
    if settings.processing_guarantee == "exactly_once":
        commits["broker_commit_interval"] = settings.transaction_interval_ms / 1000
        # A transaction's records are handed over in bursts (those kept during a commit): batches of
        # 16 kB (aiokafka's default) fill at once and each hand-over waits for a produce round trip.
        commits["producer_max_batch_size"] = 256 * 1024
    return dict(
        broker=settings.broker_url,
        broker_credentials=settings.connection.faust_credentials(),
        store=settings.store,
        table_standby_replicas=settings.standby_replicas,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        broker_session_timeout=settings.session_timeout,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        datadir=str(settings.data_dir / "faust"),
        producer_linger_ms=1,
        stream_buffer_maxsize=8192,
        consumer_auto_offset_reset="earliest",
        **commits,
    )
