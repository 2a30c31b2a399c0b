"""The gateway's composition root: database, Kafka publisher, the app, uvicorn."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

__all__ = ["build", "serve"]


def build(settings):
    """The gateway app for these settings: its publisher, its two feeds and its webhook deliverer
    started and stopped with it."""
    from models.store.db import init_db, make_engine

    from ..handlers import Topics
    from .app import Gateway, create_gateway
    from .crossings import from_settings
    from .driver import load_link_key
    from .notify import Deliverer, Feed, store_deliveries
    from .publisher import KafkaPublisher

    engine = make_engine(settings.database_url)
    if engine.dialect.name == "sqlite":
        _write_ahead(engine)
    init_db(engine)
    topics = Topics.with_prefix(settings.topic_prefix)
    publisher = KafkaPublisher(settings.connection, topics.gateway_requests)
    gateway = Gateway(
        engine=engine,
        publisher=publisher,
        driver_link_key=load_link_key(settings.driver_link_key_path),
        clock_of_the_log=settings.clock_seconds <= 0,  # no wall clock in the channel (the demo's day)
        crossings=from_settings(engine, settings),
    )
    deliverer = Deliverer(engine, retry_s=settings.webhook_retry_seconds)
    isolation = "read_committed" if settings.processing_guarantee == "exactly_once" else "read_uncommitted"

    async def deliveries(envelopes) -> None:
        if await asyncio.to_thread(store_deliveries, engine, envelopes, gateway.now()):
            deliverer.wake.set()

    async def live(envelopes) -> None:
        for envelope in envelopes:
            gateway.hub.tell(envelope)

    feeds = [
        Feed(settings.connection, topics, group=f"{settings.app_id}-gateway", isolation=isolation, take=deliveries),
        Feed(settings.connection, topics, group=None, isolation=isolation, take=live, ready=gateway.hub.ready),
    ]

    @asynccontextmanager
    async def lifespan(app):
        await publisher.start()
        tasks = [asyncio.create_task(_kept(t.run)) for t in (*feeds, deliverer)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await publisher.stop()

    return create_gateway(gateway, lifespan=lifespan)


def _write_ahead(engine) -> None:
    """SQLite (development) in write-ahead mode: the gateway's request rows and the reads beside
    them do not wait on each other, and a commit does not wait for a sync of the whole file
    (synchronous=NORMAL: a power cut may lose the last commits, never corrupt the file)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


async def _kept(run) -> None:
    """Run a background task again after it fails (the broker or the database away for a while),
    its failure logged: webhooks and event streams resume by themselves."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logging.getLogger("greenchannel.gateway").exception("a gateway task failed; starting it again in 5 s")
        await asyncio.sleep(5)  # a retry backoff, not a synchronisation


def serve(settings, *, host: str, port: int) -> int:
    """Serve until SIGINT or SIGTERM; port 0: any free one. Prints its address once it listens."""
    import socket

    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # before the address is printed: a client that reads it and connects at once waits, not refused
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"gateway at http://{shown}:{bound}/ (API docs at http://{shown}:{bound}/docs)", flush=True)
    server.run(sockets=[sock])
    return 0
