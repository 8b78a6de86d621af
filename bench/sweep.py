"""The real service's ingest at several connection counts: req/s and latency against concurrency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from app.database import upgrade
from bench.database import DatabaseServer
from bench.delivery import SDKAPPIDS
from bench.runner import Measurement, measure
from bench.servers import free_port, real_target
from bench.wrk import Load


@dataclass(frozen=True)
class SweepPoint:
    """One connection count's measured run."""

    connections: int
    measurement: Measurement

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.measurement.result.rps

    @property
    def p50_ms(self) -> float:
        """Median latency in ms."""
        return self.measurement.result.latency_us.p50 / 1000

    @property
    def p99_ms(self) -> float:
        """99th-percentile latency in ms."""
        return self.measurement.result.latency_us.p99 / 1000


def run_sweep(
    levels: list[int],
    base: Load,
    *,
    workers: int,
    server: DatabaseServer,
    postmaster_pid: int | None,
    wrk: str,
    results_dir: Path,
    workdir: Path,
    stamp: str,
    console: Console,
) -> list[SweepPoint]:
    """`profile-audit serve` on a fresh database per level, under `base` with `connections` changed."""
    points: list[SweepPoint] = []
    for connections in levels:
        load = Load(
            connections,
            min(base.threads, connections),
            base.duration,
            base.warmup,
            base.timeout,
            base.users,
        )
        url = server.create(f"bench_sweep_{connections}_{stamp.replace('-', '_')}")
        upgrade(url)
        server.checkpoint()
        console.print(f"suite: sweep: {connections} connections, {load.warmup} s + {load.duration} s…")
        port = free_port()
        measured = measure(
            real_target(port, workers, url, SDKAPPIDS[0]),
            wrk=wrk,
            load=load,
            port=port,
            log_path=results_dir / f"{stamp}-sweep-{connections}.log",
            workdir=workdir,
            postmaster_pid=postmaster_pid,
        )
        points.append(SweepPoint(connections, measured))
        server.drop(url)
    return points
