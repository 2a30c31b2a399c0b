"""Where a worker's time goes.

* `profile_handlers`: the Kafka-free handlers in process on N requests under pyinstrument
  (the decision, then the tracker's issue command, as the worker's agents run them).
* `profile_worker`: `py-spy record` on a real `greenchannel worker` subprocess while it works
  through a pre-filled requests topic (Faust, aiokafka, tables, projections included).

Both return the top functions by self time and by inclusive time, as shares of the samples.
`python -m bench.profile [--requests N] [--worker-seconds S]` runs them alone.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .harness import OUT_DIR, run_id
from .workload import Message

__all__ = ["profile_handlers", "profile_worker", "summarize_collapsed"]


def _label(function: str, path: str) -> str:
    path = re.sub(r"^.*?/(site-packages|lib/python3\.\d+)/", "", path)
    path = re.sub(r"^.*/work/main/", "", path)
    return f"{function} ({path})"


def profile_handlers(requests: list[Message], *, top: int = 15, out: Path = OUT_DIR / "profile-handlers.txt") -> dict:
    from pyinstrument import Profiler

    from .suites import build_bench_pipeline, run_handlers

    pipeline = build_bench_pipeline()
    profiler = Profiler(interval=0.0005)
    t = time.perf_counter()
    profiler.start()
    run_handlers(pipeline, requests)
    profiler.stop()
    elapsed = time.perf_counter() - t
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profiler.output_text(unicode=False, color=False, show_all=False))

    root = profiler.last_session.root_frame()
    total = root.time
    own: Counter = Counter()
    incl: Counter = Counter()

    def walk(frame, stack: frozenset) -> None:
        if frame.is_synthetic:
            return
        label = _label(frame.function, frame.file_path_short or frame.file_path or "")
        own[label] += frame.total_self_time
        if label not in stack:
            incl[label] += frame.time
        for child in frame.children:
            walk(child, stack | {label})

    walk(root, frozenset())
    return {
        "tool": "pyinstrument",
        "requests": len(requests),
        "seconds": round(elapsed, 2),
        "requests_per_second_under_profiler": round(len(requests) / elapsed, 1),
        "report": str(out),
        "top_self": [{"function": k, "share": round(v / total, 4)} for k, v in own.most_common(top)],
        "top_inclusive": [
            {"function": k, "share": round(v / total, 4)} for k, v in incl.most_common(top * 3) if v / total < 0.999
        ][: top * 2],
    }


def _collapsed(path: Path):
    """(stack, samples) for each line of a py-spy `--format raw` (collapsed stacks) file."""
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            stack, _, n = line.rpartition(" ")
            yield stack, int(n)


def summarize_collapsed(path: Path, *, top: int = 15) -> dict:
    """Top self and inclusive functions of a py-spy `--format raw` (collapsed stacks) file."""
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for stack, count in _collapsed(path):
        total += count
        frames = []
        for f in stack.split(";"):
            m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", f)
            frames.append(_label(m.group(1), m.group(2)) if m else f)
        if frames:
            own[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    if not total:
        return {"samples": 0, "top_self": [], "top_inclusive": []}
    return {
        "samples": total,
        "top_self": [{"function": k, "share": round(v / total, 4)} for k, v in own.most_common(top)],
        "top_inclusive": [
            {"function": k, "share": round(v / total, 4)} for k, v in incl.most_common(top * 4) if v / total < 0.95
        ][: top * 2],
    }


# Where a worker's samples go, in priority order: the first rule matching any frame of a stack
# takes the whole sample. Idle samples (the event loop waiting in select) are counted apart.
CATEGORIES = (
    (
        "logging: debug records built and filtered (Faust's spinner lowers the root logger to DEBUG)",
        ("Logger.debug", "Logger._log", "Logger.handle"),
    ),
    (
        "table writes (streams.worker.compat.DirectTable: the store, and the changelog record's bytes)",
        ("DirectTable.",),
    ),
    (
        "handlers: decisions and issue (Pipeline.on_request: parse, locate, assess, route, sign)",
        ("Pipeline.on_request",),
    ),
    (
        "handlers: scans and re-evaluation (Pipeline.on_scan, Pipeline.on_pass_event)",
        ("Pipeline.on_pass_event", "Pipeline.on_scan"),
    ),
    (
        "send path (send_all → app.producer.send, Faust's thin wrapper of aiokafka's)",
        ("send_all", "send_in_partition_transaction"),
    ),
    (
        "aiokafka producer: batches, produce requests, socket writes",
        ("Sender.", "SendProduceReqHandler", "MessageAccumulator"),
    ),
    (
        "aiokafka consumer: fetch requests and record decoding",
        ("Fetcher.", "_proc_fetch", "Consumer.getmany", "AIOKafkaConsumer.", "_drain_messages"),
    ),
    ("Faust/mode stream and agent machinery (per-event iteration, acks, callbacks)", ("(faust/", "(mode/")),
    ("asyncio event loop", ("(asyncio/",)),
)


def categorize_collapsed(path: Path) -> dict:
    """Shares of the busy samples of a py-spy raw file, by CATEGORIES; idle apart."""
    counts: Counter = Counter()
    idle = total = 0
    for stack, count in _collapsed(path):
        total += count
        frames = stack.split(";")
        if (
            frames[-1].startswith(("EpollSelector.select", "select (selectors", "_worker (concurrent"))
            or "Condition.wait" in frames[-1]
            or "Event.wait" in frames[-1]
        ):
            idle += count
            continue
        for name, needles in CATEGORIES:
            if any(needle in f for f in frames for needle in needles):
                counts[name] += count
                break
        else:
            counts["other (imports, threads, GC, …)"] += count
    busy = total - idle
    return {
        "samples": total,
        "idle_share": round(idle / total, 4) if total else None,
        "busy_by_category": [{"category": k, "share_of_busy": round(v / busy, 4)} for k, v in counts.most_common()]
        if busy
        else [],
    }


async def profile_worker(
    ctx, requests: list[Message], firms, risks, *, seconds: float = 15.0, out: Path = OUT_DIR / "profile-worker.txt"
) -> dict:
    """py-spy record on one worker, from its first output for `seconds`, at 200 Hz."""
    from streams.handlers import Topics

    from .harness import wait_for_count
    from .suites import _cleanup, _prepare_system, fill, start_workers, worker_env

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"tool": "py-spy", "error": "py-spy not installed (pip install -e '.[bench]')"}
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await _prepare_system(ctx, topics, firms, risks)
    await fill(ctx.connection, topics.requests, requests, partitions=ctx.partitions)
    [proc] = start_workers(ctx, worker_env(ctx, rid, prefix), rid, 1)
    try:
        await wait_for_count(
            ctx.connection, [topics.decisions, topics.deadletter], 1, timeout=ctx.timeout, alive=proc.alive, poll=0.1
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        done = await asyncio.to_thread(
            subprocess.run,
            [
                spy,
                "record",
                "-p",
                str(proc.popen.pid),
                "-d",
                str(int(seconds)),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if done.returncode != 0 or not out.exists():
            return {"tool": "py-spy", "error": (done.stderr or done.stdout).strip()[-500:]}
    finally:
        proc.stop()
        await _cleanup(ctx, prefix, f"bench-{rid}")
    return {
        "tool": "py-spy record (--nonblocking, 200 Hz)",
        "seconds": seconds,
        "report": str(out),
        **summarize_collapsed(out),
        "categories": categorize_collapsed(out),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    from rich.console import Console

    from . import workload

    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--worker-seconds", type=float, default=0, help="also py-spy a worker (needs a broker)")
    parser.add_argument("--broker-url")
    args = parser.parse_args(argv)
    console = Console()
    result = profile_handlers(workload.requests(args.requests))
    console.print(result)
    if args.worker_seconds:
        from streams.dev.broker import TansuBroker

        from .suites import Context

        broker = None
        if args.broker_url:
            url = args.broker_url
        else:
            broker = TansuBroker(log_path=OUT_DIR / "tansu.log").start()
            url = broker.url
        try:
            ctx = Context(broker_url=url)
            firms, risks = workload.reference()
            console.print(
                asyncio.run(
                    profile_worker(
                        ctx,
                        workload.requests(int(args.worker_seconds * 1000)),
                        firms,
                        risks,
                        seconds=args.worker_seconds,
                    )
                )
            )
        finally:
            if broker:
                broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
