"""`python -m bench`: measure the service, the echo ceiling and the insert baseline under one load."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console

from app.database import upgrade
from bench.correctness import Correctness, check_log
from bench.database import DatabaseServer, server_facts
from bench.delivery import SDKAPPIDS
from bench.machine import machine_info
from bench.report import Report, print_report, write_files
from bench.runner import Measurement, measure
from bench.servers import Running, Target, echo_target, free_port, insert_target, real_target
from bench.wrk import Load, WrkMissing, ensure_wrk, wrk_version

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("real", "insert", "echo")


@dataclass(frozen=True)
class Planned:
    """A target ready to start: where it listens, its database, what to do after its warm-up."""

    target: Target
    port: int
    database_url: str | None
    after_warmup: Callable[[], None] | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--connections", type=int, default=64, help="open HTTP connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--duration", type=int, default=15, help="measured seconds per target (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per target (default 3)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk request timeout in seconds (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--users", type=int, default=1000, help="distinct From_Account per wrk thread (1000)")
    parser.add_argument(
        "--insert-pool", type=int, default=0, help="baseline pool per worker (0: conns/workers)"
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset of real,insert,echo"
    )
    parser.add_argument("--database-url", help="use this PostgreSQL (fresh databases are created on it)")
    parser.add_argument("--keep-databases", action="store_true", help="with --database-url: keep them")
    parser.add_argument(
        "--analyze-after-warmup",
        action="store_true",
        help="ANALYZE the real service's database after its warm-up (as autovacuum would, in time)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy each target's workers in an extra pass"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where JSON and Markdown go")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


def _insert_pool(requested: int, load: Load, workers: int, max_connections: object) -> int:
    if requested > 0:
        return requested
    wanted = math.ceil(load.connections / workers)
    limit = int(str(max_connections)) - 10 if str(max_connections).isdigit() else 90
    return max(1, min(wanted, limit // workers))


def _target(name: str, args: argparse.Namespace, server: DatabaseServer, facts: dict[str, Any]) -> Planned:
    """The target `name` on a free port, with a fresh database where it needs one."""
    port, tag = free_port(), args.stamp.replace("-", "_")
    if name == "real":
        url = server.create(f"bench_real_{tag}")
        upgrade(url)
        hook = partial(server.analyze, url) if args.analyze_after_warmup else None
        return Planned(real_target(port, args.workers, url, SDKAPPIDS[0]), port, url, hook)
    if name == "insert":
        pool = _insert_pool(args.insert_pool, args.load, args.workers, facts.get("max_connections"))
        url = server.create(f"bench_insert_{tag}")
        return Planned(insert_target(port, args.workers, url, pool), port, url, None)
    return Planned(echo_target(port, args.workers), port, None, None)


def run_targets(
    args: argparse.Namespace,
    server: DatabaseServer,
    facts: dict[str, Any],
    wrk: str,
    console: Console,
    inspect_real: Callable[[Running], None] | None = None,
) -> tuple[list[Measurement], Correctness | None]:
    """Measure every chosen target in turn; check the real service's log after its run.

    `inspect_real` sees the real service still running after its measured run (e.g. its memory).
    """
    measurements: list[Measurement] = []
    correctness: Correctness | None = None
    with tempfile.TemporaryDirectory(prefix="bench-work-") as scratch:
        for name in args.targets:
            planned = _target(name, args, server, facts)
            server.checkpoint()
            console.print(
                f"bench: {planned.target.title}: {args.warmup} s warm-up, {args.duration} s measured…"
            )
            measured = measure(
                planned.target,
                wrk=wrk,
                load=args.load,
                port=planned.port,
                log_path=args.results_dir / f"{args.stamp}-{name}.log",
                workdir=Path(scratch),
                postmaster_pid=facts.get("postmaster_pid"),
                after_warmup=planned.after_warmup,
                profile_to=args.results_dir / f"{args.stamp}-{name}.pyspy.txt" if args.profile else None,
                before_stop=inspect_real if name == "real" else None,
            )
            measurements.append(measured)
            if name == "real" and planned.database_url is not None:
                correctness = check_log(
                    planned.database_url,
                    ok_responses=measured.ok_total,
                    unanswered=measured.unanswered_total,
                    other_responses=measured.other_total,
                )
    return measurements, correctness


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every target ran and the real service's log checked out."""
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        wrk = ensure_wrk()
    except WrkMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    args.load = Load(args.connections, args.threads, args.duration, args.warmup, args.timeout, args.users)
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    machine = {**machine_info(), "wrk": wrk_version(wrk)}
    server = DatabaseServer(args.database_url)
    where = "throwaway embedded PostgreSQL" if server.embedded else "--database-url"
    console.print(f"bench: starting; database: {where}; results go to {args.results_dir}")
    try:
        server.start()
        try:
            facts = server_facts(server.admin_url)
            measurements, correctness = run_targets(args, server, facts, wrk, console)
        finally:
            server.stop(keep=args.keep_databases)
    except (RuntimeError, OSError, asyncpg.PostgresError, subprocess.SubprocessError) as exc:
        print(f"bench: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    report = Report(
        args.stamp,
        args.analyze_after_warmup,
        args.load,
        args.workers,
        machine,
        facts,
        where,
        measurements,
        correctness,
    )
    print_report(report, console)
    json_path, md_path = write_files(report, args.results_dir, args.stamp)
    console.print(
        f"bench: wrote {json_path} and {md_path} (server logs: {args.results_dir}/{args.stamp}-*.log)"
    )
    return 0 if correctness is None or correctness.passed else 1
