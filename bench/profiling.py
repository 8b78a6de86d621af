"""Optional py-spy pass over the real service's workers: a flamegraph and the hottest functions."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
PROCESS_FRAMES = re.compile(r'^(?:process \d+:"[^"]*";)+')
INSTALL_HINT = "install it into the venv: .venv/bin/pip install py-spy"


def find_py_spy() -> str | None:
    """py-spy beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(py_spy: str, pid: int, seconds: int, raw_path: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` and its children (the uvicorn workers) for `seconds` into collapsed stacks."""
    command = [py_spy, "record", f"--pid={pid}", "--subprocesses", f"--duration={seconds}", "--rate=200"]
    command += ["--nonblocking", "--format=raw", f"--output={raw_path}"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame(frame: str) -> tuple[str, str]:
    """(function with its file, the package or module it belongs to)."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "?"
    file = match["file"]
    package = file.split("/")[0] if "/" in file else file.removesuffix(".py")
    return f"{match['name']} ({file})", package


def summarize(raw_path: Path, top: int = 15) -> list[str]:
    """Lines: where the busy worker threads were, by function (self time) and by package."""
    functions: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = PROCESS_FRAMES.sub("", line).rpartition(" ")
        if not stack or not count_text.isdigit() or stack.startswith("process "):
            continue  # unparsable, or a sample with no Python frame
        count = int(count_text)
        function, package = _frame(stack.split(";")[-1])
        samples += count
        functions[function] += count
        packages[package] += count
    if samples == 0:
        return ["py-spy recorded no samples"]
    lines = [f"{samples} samples of busy worker threads; self time by function:"]
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in functions.most_common(top)]
    lines.append("self time by package or stdlib module:")
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in packages.most_common(top)]
    return lines
