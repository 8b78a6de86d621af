"""The results: a table on the console, and the same as JSON and Markdown in bench/results/."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from bench.correctness import Correctness
from bench.runner import Measurement
from bench.wrk import Load

QUIET_OTHER_CORES = 0.15
HEADERS = (
    "target",
    "req/s",
    "p50 ms",
    "p99 ms",
    "non-2xx",
    "errors",
    "CPU srv/pg/wrk/other",
    "CPU ms/req",
    "real ÷ this",
)
FACT_KEYS = (
    "version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_connections",
    "data_filesystem",
)


@dataclass(frozen=True)
class Report:
    """Everything one bench run found."""

    started_at: str
    analyzed: bool
    load: Load
    workers: int
    machine: dict[str, str]
    postgres: dict[str, Any]
    database: str
    measurements: list[Measurement]
    correctness: Correctness | None

    def rps(self, name: str) -> float | None:
        """Requests per second of target `name`, if it ran."""
        return next((m.result.rps for m in self.measurements if m.name == name), None)

    def ratio(self, other: str) -> float | None:
        """real req/s ÷ `other` req/s."""
        real, base = self.rps("real"), self.rps(other)
        return real / base if real is not None and base else None


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.1f}"


def rows(report: Report) -> list[tuple[str, ...]]:
    """One row of cells per measured target."""
    real = report.rps("real")
    out: list[tuple[str, ...]] = []
    for m in report.measurements:
        r = m.result
        cpu = m.cpu_cores
        ratio = f"{real / r.rps:.2f}×" if real is not None and r.rps else "–"
        out.append(
            (
                m.name,
                f"{r.rps:,.0f}",
                _ms(r.latency_us.p50),
                _ms(r.latency_us.p99),
                str(r.non_2xx),
                str(r.socket_errors),
                " / ".join(f"{cpu.get(k, 0.0):.2f}" for k in ("server", "postgres", "wrk", "other")),
                f"{m.cpu_ms_per_request:.2f}",
                ratio,
            )
        )
    return out


def ratio_lines(report: Report) -> list[str]:
    """The two ratios that judge the service."""
    lines = []
    for other, label in (("echo", "echo ceiling"), ("insert", "one-INSERT-per-request baseline")):
        value = report.ratio(other)
        if value is not None:
            lines.append(f"real / {label}: {value:.2f}×")
    return lines


def legend(report: Report) -> list[str]:
    """What each target is, and what the CPU column counts."""
    lines = [f"{m.name}: {m.title}" for m in report.measurements]
    lines.append(
        "CPU: cores busy during the measured run: server processes / PostgreSQL / wrk / everything else;"
        " CPU ms/req: (server + PostgreSQL) CPU time per completed request"
    )
    busiest = max((m.cpu_cores.get("other", 0.0) for m in report.measurements), default=0.0)
    if busiest > QUIET_OTHER_CORES:
        lines.append(
            f"WARNING: the machine was not quiet (up to {busiest:.2f} cores used by other processes during"
            f" a run; load average {report.machine.get('load average', '?')} at the start): the numbers are"
            " lower and noisier than on an idle machine"
        )
    return lines


def load_line(report: Report) -> str:
    """The load every target got."""
    load = report.load
    return (
        f"wrk: {load.connections} connections, {load.threads} threads, {load.duration} s measured after"
        f" {load.warmup} s warm-up, {load.users} users/thread; servers: {report.workers} workers each"
        + ("; real's database ANALYZEd after its warm-up" if report.analyzed else "")
    )


def print_report(report: Report, console: Console) -> None:
    """The table, the ratios, the correctness line and the facts."""
    table = Table(title="Sustained durable ingest over HTTP (POST /callback)", title_justify="left")
    for index, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    for line in legend(report):
        console.print(line, style="dim")
    console.print(load_line(report))
    for line in ratio_lines(report):
        console.print(line)
    if report.correctness is not None:
        console.print(f"correctness (real): {report.correctness.summary()}")
    for m in report.measurements:
        for line in m.profile:
            console.print(line, highlight=False)
    console.print("machine: " + "; ".join(f"{k} {v}" for k, v in report.machine.items()))
    facts = "; ".join(f"{k} {report.postgres.get(k)}" for k in FACT_KEYS)
    console.print(f"postgres ({report.database}): {facts}")


def markdown(report: Report) -> str:
    """The same report as Markdown."""
    lines = [f"# Ingest benchmark, {report.started_at}", ""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    lines.extend("| " + " | ".join(row) + " |" for row in rows(report))
    lines.append("")
    lines.extend(f"- {line}" for line in legend(report))
    lines.extend(["", load_line(report), ""])
    lines.extend(f"- {line}" for line in ratio_lines(report))
    if report.correctness is not None:
        lines.append(f"- correctness (real): {report.correctness.summary()}")
    for m in report.measurements:
        if m.profile:
            lines.extend(["", f"## Profile of {m.name} (extra pass, py-spy)", "", "```", *m.profile, "```"])
    lines.extend(["", "## Machine", ""])
    lines.extend(f"- {k}: {v}" for k, v in report.machine.items())
    lines.extend(["", f"## PostgreSQL ({report.database})", ""])
    lines.extend(f"- {k}: {report.postgres.get(k)}" for k in FACT_KEYS)
    return "\n".join(lines) + "\n"


def as_json(report: Report) -> bytes:
    """The full report (raw wrk results included) as JSON."""
    data: dict[str, Any] = {
        "started_at": report.started_at,
        "analyzed_after_warmup": report.analyzed,
        "load": asdict(report.load),
        "workers": report.workers,
        "machine": report.machine,
        "postgres": report.postgres,
        "database": report.database,
        "ratios": {"real_over_echo": report.ratio("echo"), "real_over_insert": report.ratio("insert")},
        "targets": {
            m.name: {
                "title": m.title,
                "rps": m.result.rps,
                "result": m.result,
                "warmup": m.warmup,
                "cpu_cores": m.cpu_cores,
                "cpu_ms_per_request": m.cpu_ms_per_request,
                "exit_status": m.exit_status,
                "profiled": m.profiled,
                "profile": list(m.profile),
                "log": m.log,
            }
            for m in report.measurements
        },
        "correctness": None
        if report.correctness is None
        else {**asdict(report.correctness), "passed": report.correctness.passed},
    }
    return msgspec.json.format(msgspec.json.encode(data), indent=2)


def write_files(report: Report, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` into `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_bytes(as_json(report))
    md_path.write_text(markdown(report))
    return json_path, md_path
