"""Everything one suite run found (also written as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.escompare import AppendRun
from bench.liverebuild import LiveRebuild
from bench.suitesteps import IngestSection, ReadSection, RebuildCase, SelfCheck
from bench.sweep import SweepPoint


@dataclass
class SuiteResult:
    """The sections' results; a section that did not run stays empty."""

    stamp: str
    quick: bool
    machine: dict[str, str]
    database: str
    wrk_path: str
    postgres: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    busy_before: dict[str, float] = field(default_factory=dict)
    check: SelfCheck | None = None
    ingest: IngestSection | None = None
    sweep: list[SweepPoint] = field(default_factory=list)
    plot: str | None = None
    appends: list[AppendRun] = field(default_factory=list)
    rebuilds: list[RebuildCase] = field(default_factory=list)
    big_log_url: str | None = None
    reads: ReadSection | None = None
    live_rebuild: LiveRebuild | None = None
    seconds: float = 0.0

    @property
    def checks_passed(self) -> bool:
        """The self-check, the ingest log check, the rebuilt row counts, and the callbacks during a
        rebuild with the projections after it, all passed (when run)."""
        ok = self.check is None or self.check.passed
        if self.ingest is not None and self.ingest.correctness is not None:
            ok = ok and self.ingest.correctness.passed
        if self.live_rebuild is not None:
            ok = ok and self.live_rebuild.passed
        return ok and all(case.counts_ok for case in self.rebuilds)
