"""One change to Faust's table recovery: seek the stream partitions before fetching resumes.

When its tables have recovered, Faust (faust-streaming 0.15) resumes the stream partitions and
only then seeks them to their committed offsets, awaiting the seek in the consumer's thread.
In between, the fetcher already delivers records of those partitions from where they stood:

* agents may process some of them before the seek, and again after it (duplicates);
* the rest of the batch being delivered when the seek lands is taken for an offset jump: the
  consumer records the offsets from the committed one up to that record as a "gap", acks them
  unprocessed, and drops the same records when the re-fetch brings them (they now sit below
  its read offset). A worker taking over a backlog lost a run of requests this way.

Seeking first, while the partitions are still paused, and resuming them after leaves nothing
fetched from before the seek. `install()` makes both places that do this (`_resume_streams`
and `on_recovery_completed`) run in that order; nothing else of Faust changes.
"""

from __future__ import annotations

import functools

from faust.tables.recovery import Recovery

__all__ = ["install"]

_PATCHED = ("_resume_streams", "on_recovery_completed")


def _seek_before_resume(method):
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        consumer = self.app.consumer
        resume, seek = consumer.resume_partitions, consumer.perform_seek
        deferred: list = []

        def resume_after_seek(tps) -> None:
            deferred.append(tps)

        def release() -> None:
            # Back to the consumer's own methods, then resume what the method asked for.
            for name in ("resume_partitions", "perform_seek"):
                consumer.__dict__.pop(name, None)
            while deferred:
                resume(deferred.pop(0))

        async def seek_then_resume() -> None:
            try:
                await seek()
            finally:
                release()

        consumer.resume_partitions = resume_after_seek
        consumer.perform_seek = seek_then_resume
        try:
            return await method(self, *args, **kwargs)
        finally:
            release()  # also when there was nothing to seek, or the method gave up

    wrapper.__gc_seek_before_resume__ = True
    return wrapper


def install() -> None:
    """Patch `faust.tables.recovery.Recovery` (idempotent)."""
    for name in _PATCHED:
        method = getattr(Recovery, name)
        if not getattr(method, "__gc_seek_before_resume__", False):
            setattr(Recovery, name, _seek_before_resume(method))
