"""streams.recovery: after table recovery, stream partitions are sought before they resume.

No broker here: a recording consumer stands in for Faust's. tests/test_faults.py shows the
effect on a real cluster (a worker killed mid-stream, every request decided once).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from faust.tables.recovery import Recovery

from streams import recovery


class RecordingConsumer:
    def __init__(self, fail_seek: bool = False) -> None:
        self.calls: list = []
        self.fail_seek = fail_seek

    def resume_partitions(self, tps) -> None:
        self.calls.append(("resume", frozenset(tps)))

    async def perform_seek(self) -> None:
        self.calls.append(("seek",))
        if self.fail_seek:
            raise TimeoutError("seek timed out")


def faust_order(*, seek: bool = True):
    """What Faust's two methods do: resume the stream partitions, then seek them."""
    async def method(self):
        consumer = self.app.consumer
        consumer.resume_partitions({"requests-0", "requests-1"})
        consumer.calls.append(("between",))
        if seek:
            await consumer.perform_seek()
        consumer.calls.append(("after",))
        return "done"
    return method


def owner(consumer) -> SimpleNamespace:
    return SimpleNamespace(app=SimpleNamespace(consumer=consumer))


async def test_seek_comes_before_resume():
    consumer = RecordingConsumer()
    wrapped = recovery._seek_before_resume(faust_order())
    assert await wrapped(owner(consumer)) == "done"
    assert consumer.calls == [("between",), ("seek",), ("resume", frozenset({"requests-0", "requests-1"})),
                              ("after",)]
    # the consumer's own methods are back
    assert "resume_partitions" not in vars(consumer) and "perform_seek" not in vars(consumer)


async def test_resume_still_happens_without_a_seek():
    consumer = RecordingConsumer()
    await recovery._seek_before_resume(faust_order(seek=False))(owner(consumer))
    assert consumer.calls == [("between",), ("after",), ("resume", frozenset({"requests-0", "requests-1"}))]


async def test_failed_seek_still_resumes_and_raises():
    consumer = RecordingConsumer(fail_seek=True)
    with pytest.raises(TimeoutError):
        await recovery._seek_before_resume(faust_order())(owner(consumer))
    assert consumer.calls == [("between",), ("seek",), ("resume", frozenset({"requests-0", "requests-1"}))]


def test_install_patches_faust_once():
    recovery.install()
    first = {name: getattr(Recovery, name) for name in recovery._PATCHED}
    recovery.install()
    for name, method in first.items():
        assert getattr(Recovery, name) is method
        assert method.__gc_seek_before_resume__
        # The premise: Faust's own method resumes the stream partitions before it seeks them.
        # If an upgrade changes that, this fails and streams/recovery.py should be revisited.
        source = inspect.getsource(method.__wrapped__)
        assert source.index("consumer.resume_partitions(") < source.index("consumer.perform_seek()")
