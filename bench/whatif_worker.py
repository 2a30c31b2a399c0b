"""`greenchannel worker` with the Faust consumer's fetch wait changed: a what-if, bench only.

Faust's aiokafka driver creates the worker's consumer with `fetch_max_wait_ms=1500`
(hard-coded). Apache Kafka answers a fetch as soon as a byte is there, so that wait only
bounds idle polls; Tansu 0.6 holds every fetch for its full wait even when records arrive
(measured: p50 ≈ wait/4, max ≈ wait/2 for a plain consumer), so on Tansu each consumer hop
adds up to 750 ms. This wrapper replaces that one value with BENCH_FETCH_WAIT_MS and then
runs the real CLI, to measure what the latency would be: `python -m bench --what-if-fetch-wait 10`.
"""

from __future__ import annotations

import os
import sys

import aiokafka

FAUST_FETCH_WAIT_MS = 1500
_init = aiokafka.AIOKafkaConsumer.__init__


def _patched(self, *topics, **kwargs):
    if kwargs.get("fetch_max_wait_ms") == FAUST_FETCH_WAIT_MS:
        kwargs["fetch_max_wait_ms"] = int(os.environ.get("BENCH_FETCH_WAIT_MS", FAUST_FETCH_WAIT_MS))
    _init(self, *topics, **kwargs)


aiokafka.AIOKafkaConsumer.__init__ = _patched

if __name__ == "__main__":
    from streams.cli import main

    sys.exit(main(["worker"]))
