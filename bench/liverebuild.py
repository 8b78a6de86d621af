"""A rebuild of the big log while `serve` takes callbacks as fast as it answers them."""

from __future__ import annotations

import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.correctness import check_projections
from bench.rebuildbench import RebuildRun, run_rebuild
from bench.servers import Running, free_port, real_target
from bench.wrk import Load, WrkResult, finish_wrk, kill_wrk, start_wrk, wrk_command

LOCK_REPORTED = re.compile(
    r"appends waited (?P<seconds>[\d.]+) s for the swap and its last (?P<events>\d+) events"
)
WARMUP_SECONDS = 3.0


@dataclass(frozen=True)
class LiveRebuild:
    """The rebuild, the callbacks posted across it, and how long appends waited for its swap."""

    connections: int
    rebuild: RebuildRun
    ingest: WrkResult
    append_lock_seconds: float | None
    events_caught_up_under_lock: int | None
    projections_match: bool | None = None  # None: not checked
    projections_detail: str = ""

    @property
    def callbacks_refused(self) -> int:
        """Callbacks answered with anything but 2xx, or not answered because of a socket error."""
        return self.ingest.non_2xx + self.ingest.socket_errors

    @property
    def passed(self) -> bool:
        """No callback refused, and the projections are the fold of the log afterwards."""
        return self.callbacks_refused == 0 and self.projections_match is True


def rebuild_while_ingesting(
    url: str,
    database: str,
    sdkappid: int,
    events: int,
    *,
    workers: int,
    connections: int,
    wrk: str,
    postmaster_pid: int | None,
    log_path: Path,
    workdir: Path,
) -> LiveRebuild:
    """Closed-loop callbacks from before the rebuild starts until after it has swapped; then the
    projections, rebuilt and caught up under load, are checked against the fold of the log."""
    port = free_port()
    running = Running(real_target(port, workers, url, sdkappid), port, log_path, workdir)
    load = Load(connections, min(2, connections), 0, 0, 10, 1000)
    try:
        running.wait_ready()
        # Longer than any rebuild here; wrk is stopped (SIGINT, it then reports) once it is over.
        command = wrk_command(
            wrk, running.url, load, 3600, secrets.token_hex(3) + "l", int(time.time() * 1000)
        )
        process = start_wrk(command)
        try:
            time.sleep(WARMUP_SECONDS)  # the callbacks' rate has settled before the rebuild starts
            rebuild = run_rebuild(url, database, sdkappid, events, postmaster_pid, workdir)
            time.sleep(WARMUP_SECONDS)  # and they go on after it
            process.send_signal(signal.SIGINT)
            ingest = finish_wrk(process)
        finally:
            kill_wrk(process)
    finally:
        running.stop()
    if rebuild.exit_status != 0:
        raise RuntimeError(f"profile-audit rebuild exited {rebuild.exit_status}:\n{rebuild.output}")
    reported = LOCK_REPORTED.search(rebuild.output)
    matches, detail = check_projections(url)
    return LiveRebuild(
        connections=connections,
        rebuild=rebuild,
        ingest=ingest,
        append_lock_seconds=float(reported["seconds"]) if reported else None,
        events_caught_up_under_lock=int(reported["events"]) if reported else None,
        projections_match=matches,
        projections_detail=detail,
    )
