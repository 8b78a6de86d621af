"""The concurrency plot: req/s and latency percentiles against open connections (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from bench.sweep import SweepPoint


def plot_sweep(points: list[SweepPoint], path: Path, subtitle: str) -> Path:
    """Draw req/s (left axis) and p50/p99 ms (right axis, log) against connections into a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    connections = [p.connections for p in points]
    figure, throughput = plt.subplots(figsize=(7.0, 3.6), dpi=96)
    throughput.plot(connections, [p.rps for p in points], "o-", color="tab:blue", label="req/s")
    throughput.set_xscale("log", base=2)
    throughput.set_xticks(connections, [str(c) for c in connections])
    throughput.set_xlabel("open HTTP connections (wrk, closed loop)")
    throughput.set_ylabel("durable req/s", color="tab:blue")
    throughput.set_ylim(bottom=0)
    throughput.grid(True, alpha=0.3)
    latency = throughput.twinx()
    latency.plot(connections, [p.p99_ms for p in points], "s--", color="tab:red", label="p99 ms")
    latency.plot(connections, [p.p50_ms for p in points], "^:", color="tab:orange", label="p50 ms")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms (log)", color="tab:red")
    handles = throughput.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.1, 0.88), fontsize=8)
    throughput.set_title(f"profile-audit serve: POST /callback vs concurrency\n{subtitle}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, pil_kwargs={"optimize": True})
    plt.close(figure)
    return path
