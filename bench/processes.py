"""The bench's helper processes (started, waited for, stopped for sure), and what a process
uses, read from /proc: CPU time, resident memory and its peak."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def start(running: contextlib.ExitStack, command: list[str],
          log: Path) -> subprocess.Popen[bytes]:
    """`command` in the repository's root, its output in `log`, stopped when `running` ends."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    running.callback(stop, process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Make the peak resident size start again from now (Linux >= 4.0; needs the right to
    write /proc/PID/clear_refs, as root or the process's owner)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
