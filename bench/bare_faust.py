"""The framework: a bare Faust agent that re-sends each event unchanged.

Configured like `streams.worker.app` (raw bytes, producer linger 1 ms, stream buffer 8192, memory
store, at-least-once), run like `greenchannel worker` (no spinner, uvloop) and iterating like its
`decide` agent (`stream.events()`, one awaited send per event), so the difference to the
pipeline is the work the pipeline does. BENCH_LINGER_MS and BENCH_SPINNER=1 are for
what-if comparisons only.

Run as a worker: BENCH_BROKER_URL, BENCH_APP_ID, BENCH_IN, BENCH_OUT, BENCH_PARTITIONS,
BENCH_DATA_DIR in the environment, then `python -m bench.bare_faust`.
"""

from __future__ import annotations

import os

import faust

from streams.settings import Settings
from streams.worker.compat import set_fetch_wait

PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "4"))

set_fetch_wait(Settings.model_fields["fetch_wait_ms"].default)  # as streams.worker.app
app = faust.App(
    os.environ.get("BENCH_APP_ID", "bench-bare-faust"),
    broker=os.environ.get("BENCH_BROKER_URL", "kafka://127.0.0.1:9092"),
    store="memory://",
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    web_enabled=False,
    datadir=os.environ.get("BENCH_DATA_DIR", "bench/out/faust"),
    producer_linger_ms=int(os.environ.get("BENCH_LINGER_MS", "1")),  # as streams.worker.app
    stream_buffer_maxsize=8192,
    consumer_auto_offset_reset="earliest",
)


def _raw(name: str) -> faust.TopicT:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS
    )


source = _raw(os.environ.get("BENCH_IN", "bench.in"))
target = _raw(os.environ.get("BENCH_OUT", "bench.out"))


@app.agent(source)
async def forward(stream):
    async for event in stream.events():
        await target.send(key=event.key, value=event.value, headers=list(event.message.headers or ()))


if __name__ == "__main__":
    from faust.worker import Worker
    from mode.loop import use as use_event_loop

    use_event_loop(Settings.model_fields["event_loop"].default)  # as `greenchannel worker` (uvloop)
    worker = Worker(app, loglevel="warning", quiet=True)
    if not os.environ.get("BENCH_SPINNER"):  # as `greenchannel worker` runs Faust (streams/cli/worker.py)
        worker.spinner = None
    worker.execute_from_commandline()
