"""`python -m bench.suite` (`make bench-all`): every benchmark, then BENCHMARKS.md and the plot."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import msgspec
from rich.console import Console

from bench.database import DatabaseServer, server_facts
from bench.machine import machine_info
from bench.plot import plot_sweep
from bench.suitereport import markdown, verdicts
from bench.suiteresult import SuiteResult
from bench.suitesteps import (
    append_section,
    ingest_section,
    live_rebuild_section,
    read_section,
    rebuild_case,
    self_check,
    wait_for_idle,
)
from bench.sweep import run_sweep
from bench.wrk import Load, WrkMissing, ensure_wrk, wrk_version

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SECTIONS = ("check", "ingest", "sweep", "appends", "rebuild", "reads", "live-rebuild")
QUICK = {
    "events": 20_000,
    "flat_events": 5_000,
    "users": 2_000,
    "levels": "8,64",
    "duration": 3,
    "warmup": 1,
    "read_duration": 3,
    "es_duration": 3,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --quick changes the defaults of the sizes and durations it names."""
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke run: small log, short runs (< 3 min); publishes nothing")
    add("--events", type=int, default=1_000_000, help="events in the big log (1,000,000)")
    add("--flat-events", type=int, default=250_000, help="the smaller log for memory flatness (250,000)")
    add("--users", type=int, default=100_000, help="users in the generated logs (100,000)")
    add("--connections", type=int, default=64, help="connections of the ingest table (64)")
    add("--levels", default="8,16,32,64,128", help="connection counts of the sweep")
    add("--duration", type=int, default=15, help="measured seconds per ingest run (15)")
    add("--warmup", type=int, default=3, help="warm-up seconds per run (3)")
    add("--workers", type=int, default=2, help="server worker processes (2)")
    add("--ingest-connections", type=int, default=8, help="ingest connections during the reads (8)")
    add("--ingest-rate", type=float, default=1000, help="paced ingest during the reads, req/s (1000)")
    add(
        "--read-workers",
        type=int,
        default=2,
        help="serve's read workers in the reads section (2; 0: every worker takes every connection)",
    )
    add("--read-connections", type=int, default=2, help="connections per read endpoint (2)")
    add("--read-pause-ms", type=float, default=10, help="pause between reads on a connection (10 ms)")
    add("--read-duration", type=int, default=20, help="measured seconds of the reads (20)")
    add(
        "--no-analyze",
        action="store_true",
        help="reads right after the rebuild, before the VACUUM (ANALYZE) autovacuum would run",
    )
    add("--es-appenders", type=int, default=64, help="concurrent appenders without HTTP (64)")
    add("--es-duration", type=int, default=15, help="measured seconds per append variant (15)")
    add("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    add("--wait-idle", type=float, default=0, help="wait up to this many s for a quiet machine per section")
    add("--database-url", help="use this PostgreSQL instead of a throwaway embedded one")
    add("--results-dir", type=Path, default=RESULTS, help="where raw results go (bench/results)")
    add("--no-publish", action="store_true", help="do not write BENCHMARKS.md and docs/bench-concurrency.png")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
        args.no_publish = True
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(args.sections) - set(SECTIONS):
        parser.error(f"--sections: unknown {sorted(unknown)}")
    args.levels = [int(level) for level in str(args.levels).split(",")]
    return args


def _run(args: argparse.Namespace, server: DatabaseServer, result: SuiteResult, console: Console) -> None:
    """Every chosen section in turn, filling `result`."""
    facts, wrk, pid = result.postgres, result.wrk_path, result.postgres.get("postmaster_pid")
    work = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    tag = args.stamp.replace("-", "_")
    try:

        def section(name: str) -> bool:
            if name not in args.sections:
                return False
            result.busy_before[name] = wait_for_idle(args.wait_idle, console)
            console.print(f"suite: == {name} ==")
            return True

        if section("check"):
            result.check = self_check(server, tag, pid, work, console)
            console.print(f"suite: self-check {'PASS' if result.check.passed else 'FAIL'}")
        if section("ingest"):
            result.ingest = ingest_section(args, server, facts, wrk, result.machine, result.database, console)
        if section("sweep"):
            base = Load(0, 2, args.duration, args.warmup, 10, 1000)
            result.sweep = run_sweep(
                args.levels,
                base,
                workers=args.workers,
                server=server,
                postmaster_pid=pid,
                wrk=wrk,
                results_dir=args.results_dir,
                workdir=work,
                stamp=args.stamp,
                console=console,
            )
            subtitle = f"{result.machine.get('cores')} cores, {str(facts.get('version', ''))[:15]}"
            plot = plot_sweep(result.sweep, args.results_dir / f"{args.stamp}-concurrency.png", subtitle)
            result.plot = str(plot)
        if section("appends"):
            result.appends = append_section(server, args, pid, console)
        if section("rebuild"):
            for events in dict.fromkeys([args.flat_events, args.events]):
                case, url = rebuild_case(
                    server, f"bench_log_{events}_{tag}", events, args.users, pid, work, console
                )
                result.rebuilds.append(case)
                if events != args.events:
                    server.drop(url)
                else:
                    result.big_log_url = url
        if section("reads") and result.big_log_url:
            users = min(args.users, args.events)
            result.reads = read_section(result.big_log_url, args.events, users, args, wrk, pid, work, console)
        if section("live-rebuild") and result.big_log_url:
            result.live_rebuild = live_rebuild_section(result.big_log_url, args, wrk, pid, work, console)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(result: SuiteResult, text: str, args: argparse.Namespace, console: Console) -> None:
    """Raw results always; BENCHMARKS.md and the plot at the repo root unless --quick/--no-publish."""
    stem = args.results_dir / f"{args.stamp}-suite"
    stem.with_suffix(".json").write_bytes(
        msgspec.json.format(msgspec.json.encode(result, enc_hook=str), indent=2)
    )
    stem.with_suffix(".md").write_text(text)
    console.print(f"suite: wrote {stem}.json and {stem}.md")
    if args.no_publish:
        return
    (REPO / "BENCHMARKS.md").write_text(text)
    if result.plot:
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(result.plot, REPO / "docs" / "bench-concurrency.png")
    console.print("suite: wrote BENCHMARKS.md and docs/bench-concurrency.png")


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 when every check passed (targets missed do not fail it), 1 on a failed check."""
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        wrk = ensure_wrk()
    except WrkMissing as exc:
        print(f"bench.suite: {exc}", file=sys.stderr)
        return 2
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    server = DatabaseServer(args.database_url)
    where = "throwaway embedded PostgreSQL" if server.embedded else "--database-url"
    started = time.monotonic()
    result = SuiteResult(args.stamp, args.quick, {**machine_info(), "wrk": wrk_version(wrk)}, where, wrk)
    result.settings = {k: v for k, v in vars(args).items() if k not in ("results_dir",)}
    console.print(f"suite: {'quick' if args.quick else 'full'} run; database: {where}")
    try:
        server.start()
        try:
            result.postgres = server_facts(server.admin_url)
            _run(args, server, result, console)
        finally:
            server.stop()
    except (RuntimeError, OSError, asyncpg.PostgresError, subprocess.SubprocessError) as exc:
        print(f"bench.suite: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    result.seconds = time.monotonic() - started
    text = markdown(result)
    _publish(result, text, args, console)
    for line in verdicts(result):
        console.print(line, highlight=False)
    console.print(f"suite: done in {result.seconds:.0f} s")
    return 0 if result.checks_passed else 1


if __name__ == "__main__":
    sys.exit(main())
