"""streams.worker.create_app, broker-free: the agents, tables, tasks, timer and views it registers.

The worker's behaviour on a broker is shown by tests/test_pipeline.py and the other live tests;
this pins what the app is made of, so that a change to its wiring is seen here by name.
"""

from __future__ import annotations

import warnings

import pytest

from streams.settings import Settings
from streams.worker import create_app


def worker_app(tmp_path, **fields):
    settings = Settings(_env_file=None, broker_url="kafka://127.0.0.1:1", data_dir=tmp_path, topic_prefix="gc.",
                        partitions=4, catalog="catalog-2020.02-v1.json", geocoder="offline", **fields)
    return create_app(settings)


def test_the_worker_registers_its_agents_on_raw_topics(tmp_path):
    app = worker_app(tmp_path)
    topics = {name.rsplit(".", 1)[-1]: list(agent.channel.topics) for name, agent in app.agents.items()}
    assert topics == {"decide": ["gc.shipment.requests"], "scan": ["gc.checkpoint.scans"],
                      "reference_data": ["gc.region.risk", "gc.enterprises", "gc.pass.keys"],
                      "track": ["gc.pass.events"]}
    for agent in app.agents.values():
        assert (agent.channel.key_serializer, agent.channel.value_serializer) == ("raw", "raw")
        assert agent.channel.partitions == 4


def test_the_worker_tables_tasks_and_views(tmp_path):
    app = worker_app(tmp_path)
    assert list(app.tables) == ["passes", "decided", "answers", "clock"]
    assert [task.__name__ for task in app._app_tasks] == ["bootstrap", "learn_table_partitions", "clock",
                                                          "consumer_lag"]
    assert list(app.web.views) == ["/passes/{pass_id}/", "/metrics", "/keys/", "/checkpoints/"]
    assert app.pipeline.meter is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # producer_linger_ms: deprecated in Faust, still honoured
        assert (app.conf.producer_linger_ms, app.conf.stream_buffer_maxsize) == (1, 8192)
    assert app.conf.consumer_auto_offset_reset == "earliest"


@pytest.mark.parametrize("seconds", [0, -1])
def test_no_clock_timer_without_a_clock_interval(tmp_path, seconds):
    app = worker_app(tmp_path, clock_seconds=seconds)
    assert "clock" not in [task.__name__ for task in app._app_tasks]
