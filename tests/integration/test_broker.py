"""`greenchannel broker` starts the embedded broker, answers Kafka requests, stops on SIGTERM."""

import asyncio
import signal
import socket
import subprocess
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.connection import Connection
from streams.dev.broker import free_port
from tests.support.system import ROOT


def test_broker_command_serves_kafka_and_stops_cleanly():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the command says it is ready
        assert line.strip() == f"broker ready at kafka://127.0.0.1:{port}", line

        async def round_trip() -> bytes:
            producer = AIOKafkaProducer(**Connection(f"127.0.0.1:{port}").kwargs())
            await producer.start()
            await producer.send_and_wait("probe", b"hello", key=b"k")
            await producer.stop()
            consumer = AIOKafkaConsumer(
                "probe", **Connection(f"127.0.0.1:{port}").kwargs(), auto_offset_reset="earliest"
            )
            await consumer.start()
            try:
                message = await asyncio.wait_for(consumer.getone(), 30)
            finally:
                await consumer.stop()
            return message.value

        assert asyncio.run(round_trip()) == b"hello"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # The broker child went with it: the port is free again.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
