"""The suite's sections, each on the shared PostgreSQL server: what runs, in which database."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the venv
from rich.console import Console

from app.database import upgrade
from bench import cli as ingest_cli
from bench.correctness import Correctness
from bench.database import DatabaseServer, database_name, log_head, vacuum_analyze
from bench.escompare import AppendRun, run_eventsourcing, run_ours
from bench.liverebuild import LiveRebuild, rebuild_while_ingesting
from bench.loadlog import LoadReport, load_log, table_counts, verify
from bench.logdata import BASE_EVENT_TIME_MS, SDKAPPID, STEP_MS
from bench.memory import ProcessMemory, server_memory
from bench.readbench import ReadPlan, ReadRun, measure_reads
from bench.rebuildbench import RebuildRun, run_rebuild
from bench.report import Report, print_report, write_files
from bench.servers import Running, free_port, real_target
from bench.wrk import Load

QUIET_CORES = 0.15


def wait_for_idle(limit: float, console: Console) -> float:
    """Wait up to `limit` s for the machine to be quiet (< 0.15 busy cores); the busy cores last seen."""
    deadline = time.monotonic() + limit
    while True:
        busy = float(psutil.cpu_percent(interval=2.0)) / 100 * (psutil.cpu_count() or 1)
        if busy < QUIET_CORES or time.monotonic() >= deadline:
            if busy >= QUIET_CORES:
                console.print(f"suite: WARNING machine still busy ({busy:.2f} cores used by others)")
            return round(busy, 2)
        console.print(f"suite: machine busy ({busy:.2f} cores), waiting for it to quieten…")


@dataclass(frozen=True)
class SelfCheck:
    """A small generated log: verify_log's verdict and the rebuilt projections' row counts."""

    events: int
    intact: bool
    verify_detail: str
    rebuild_status: int
    expected: dict[str, int]
    counted: dict[str, int]

    @property
    def passed(self) -> bool:
        """The chain verifies, the rebuild succeeded and every table has the expected rows."""
        return self.intact and self.rebuild_status == 0 and self.expected == self.counted


@dataclass(frozen=True)
class RebuildCase:
    """A generated log and the rebuild run over it."""

    load: LoadReport
    run: RebuildRun
    counts_ok: bool


def _expected(load: LoadReport) -> dict[str, int]:
    return {"events": load.events, "profiles": load.user_tags, "profile_changes": load.items}


def rebuild_case(
    server: DatabaseServer,
    name: str,
    events: int,
    users: int,
    postmaster_pid: int | None,
    workdir: Path,
    console: Console,
) -> tuple[RebuildCase, str]:
    """Generate a log of `events` in a fresh database `name`, rebuild it; returns the case and its URL."""
    url = server.create(name)
    upgrade(url)
    console.print(f"suite: generating {events:,} events over {users:,} users into {name}…")
    loaded = load_log(url, events, users)
    console.print(f"suite: {loaded.timings}; rebuilding…")
    server.checkpoint()
    run = run_rebuild(url, name, SDKAPPID, loaded.events, postmaster_pid, workdir)
    if run.exit_status != 0:
        raise RuntimeError(f"profile-audit rebuild exited {run.exit_status}:\n{run.output}")
    console.print(
        f"suite: rebuild of {events:,} events: {run.wall_seconds:.1f} s wall,"
        f" {run.events_per_second:,.0f} events/s; CLI peak RSS {run.cli.hwm / 1e6:.0f} MB"
    )
    return RebuildCase(loaded, run, table_counts(url) == _expected(loaded)), url


def self_check(
    server: DatabaseServer, stamp: str, postmaster_pid: int | None, workdir: Path, console: Console
) -> SelfCheck:
    """Generate 20,000 events, verify the chain with app.verify, rebuild, compare the row counts."""
    case, url = rebuild_case(server, f"bench_check_{stamp}", 20_000, 2_000, postmaster_pid, workdir, console)
    intact, detail = verify(url)
    counted = table_counts(url)
    server.drop(url)
    return SelfCheck(case.load.events, intact, detail, case.run.exit_status, _expected(case.load), counted)


@dataclass
class IngestSection:
    """The ingest table (real, insert, echo) and the real service's memory after its run."""

    report: Report
    correctness: Correctness | None
    workers: list[ProcessMemory] = field(default_factory=list)


def ingest_section(
    args: argparse.Namespace,
    server: DatabaseServer,
    facts: dict[str, Any],
    wrk: str,
    machine: dict[str, str],
    where: str,
    console: Console,
) -> IngestSection:
    """The existing ingest bench (bench/cli.py), under the suite's load; worker memory before stop."""
    bench_args = ingest_cli.parse_args(
        [f"--connections={args.connections}", f"--workers={args.workers}", "--analyze-after-warmup"]
    )
    bench_args.load = Load(args.connections, 2, args.duration, args.warmup, 10, 1000)
    bench_args.duration, bench_args.warmup = args.duration, args.warmup
    bench_args.stamp = args.stamp
    bench_args.results_dir = args.results_dir
    workers: list[ProcessMemory] = []
    measurements, correctness = ingest_cli.run_targets(
        bench_args,
        server,
        facts,
        wrk,
        console,
        inspect_real=lambda running: workers.extend(server_memory(running.process.pid)),
    )
    report = Report(
        args.stamp, True, bench_args.load, args.workers, machine, facts, where, measurements, correctness
    )
    print_report(report, console)
    write_files(report, args.results_dir, f"{args.stamp}-ingest")
    return IngestSection(report, correctness, workers)


def append_section(
    server: DatabaseServer, args: argparse.Namespace, postmaster_pid: int | None, console: Console
) -> list[AppendRun]:
    """eventsourcing's recorder, our append_events one per commit, our group committer: no HTTP."""
    runs: list[AppendRun] = []
    tag = args.stamp.replace("-", "_")
    for variant in ("eventsourcing", "ours-single", "ours-group"):
        url = server.create(f"bench_append_{variant.replace('-', '_')}_{tag}")
        if variant != "eventsourcing":
            upgrade(url)
        server.checkpoint()
        console.print(f"suite: appends without HTTP: {variant}, {args.es_appenders} appenders…")
        if variant == "eventsourcing":
            run = run_eventsourcing(
                url, args.es_appenders, args.warmup, args.es_duration, args.users, postmaster_pid
            )
        else:
            run = run_ours(
                url,
                args.es_appenders,
                args.warmup,
                args.es_duration,
                args.users,
                postmaster_pid,
                grouped=variant == "ours-group",
            )
        console.print(f"suite: {run.title}: {run.rate:,.0f} appends/s, p99 {run.p99_ms:.1f} ms")
        runs.append(run)
        server.drop(url)
    return runs


@dataclass
class ReadSection:
    """Read latency scenarios on the big log, and the workers' memory after them."""

    runs: list[ReadRun]
    workers: list[ProcessMemory]


def read_section(
    url: str,
    events: int,
    users: int,
    args: argparse.Namespace,
    wrk: str,
    postmaster_pid: int | None,
    workdir: Path,
    console: Console,
) -> ReadSection:
    """`serve --workers N` on the rebuilt log; reads under a paced, then an unpaced ingest load,
    then alone."""
    plan = ReadPlan(
        users=users,
        at_low=BASE_EVENT_TIME_MS + STEP_MS * events // 2,
        at_high=BASE_EVENT_TIME_MS + STEP_MS * events,
        connections=args.read_connections,
        pause_ms=args.read_pause_ms,
        duration=args.read_duration,
        warmup=args.warmup,
    )
    conns = args.ingest_connections
    pause = 1000 * conns / args.ingest_rate if args.ingest_rate > 0 else 0.0
    scenarios: list[tuple[str, Load | None]] = [("paced", Load(conns, min(2, conns), 0, 0, 10, 1000, pause))]
    if pause > 0:
        scenarios.append(("closed loop", Load(conns, min(2, conns), 0, 0, 10, 1000)))
    # The same reads with no callbacks: what the service answers in when the cores are its own.
    scenarios.append(("none", None))
    if not args.no_analyze:
        # Steady state: autovacuum vacuums and analyzes the rebuilt tables within about a minute
        # (their inserts cross its thresholds); until then index-only scans visit the heap.
        vacuum_analyze(url)
    port = free_port()
    running = Running(
        real_target(port, args.workers, url, SDKAPPID, args.read_workers),
        port,
        args.results_dir / f"{args.stamp}-reads.log",
        workdir,
    )
    runs: list[ReadRun] = []
    try:
        running.wait_ready()
        for scenario, ingest in scenarios:
            load = f" ({conns} connections)" if ingest is not None else ""
            console.print(f"suite: reads on {events:,} events, ingest {scenario}{load}…")
            runs.append(measure_reads(running, wrk, plan, ingest, postmaster_pid, scenario))
        workers = server_memory(running.process.pid)
    finally:
        running.stop()
    return ReadSection(runs, workers)


def live_rebuild_section(
    url: str,
    args: argparse.Namespace,
    wrk: str,
    postmaster_pid: int | None,
    workdir: Path,
    console: Console,
) -> LiveRebuild:
    """The big log rebuilt again while `serve --workers N` takes callbacks as fast as it answers."""
    events = log_head(url)
    console.print(
        f"suite: rebuilding {events:,} events while callbacks arrive ({args.connections} connections)…"
    )
    run = rebuild_while_ingesting(
        url,
        database_name(url),
        SDKAPPID,
        events,
        workers=args.workers,
        connections=args.connections,
        wrk=wrk,
        postmaster_pid=postmaster_pid,
        log_path=args.results_dir / f"{args.stamp}-live-rebuild.log",
        workdir=workdir,
    )
    console.print(
        f"suite: rebuild {run.rebuild.wall_seconds:.1f} s; {run.ingest.requests:,} callbacks,"
        f" {run.callbacks_refused} refused; appends waited {run.append_lock_seconds} s for the swap"
    )
    return run
