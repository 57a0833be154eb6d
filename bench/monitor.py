"""What the machine was doing during one measurement: CPU idle, open sessions, and the server's memory.

A background thread samples /proc while the load runs. CPU idle comes from /proc/stat deltas over the
whole window (all cores), so a figure taken while another engineer's job ate a core shows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import procs


def cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies over all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # guest time is already counted in user


def idle_pct_since(start: tuple[int, int]) -> float:
    """CPU idle (%) over all cores since ``start`` (a :func:`cpu_times` reading)."""
    idle, total = cpu_times()
    return 100.0 * (idle - start[0]) / max(1, total - start[1])


def established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is ``port`` (sessions the server holds)."""
    want = f":{port:04X} "
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split(None, 4)
            # parts[1] is local "ADDR:PORT", parts[3] the state; 01 = ESTABLISHED.
            if parts[3] == "01" and (parts[1] + " ").endswith(want):
                count += 1
    return count


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    """The result of one monitored window."""

    seconds: float = 0.0
    cpu_idle_pct: float = 0.0
    peak_sessions: int = 0
    peak_rss_sum_kib: int = 0  # largest sum of VmRSS over the server's processes seen at one time
    idle_rss_sum_kib: int = 0  # the same sum at the start of the window, before any traffic
    peak_hwm_kib: int = 0  # largest VmHWM of any one server process (kernel-tracked, misses nothing)
    processes: int = 0
    rss_samples: list[int] = field(default_factory=list, repr=False)


class Monitor:
    """Samples sessions on ``port`` and the memory of the processes ``pids()`` names, every ``interval``."""

    def __init__(
        self, *, port: int | None, pids: Callable[[], list[int]] | None, interval: float = 0.1
    ) -> None:
        self.port = port
        self.pids = pids
        self.interval = interval
        self.result = Sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._t0 = 0.0
        self._cpu0 = (0, 0)

    def __enter__(self) -> Monitor:
        self._t0 = time.monotonic()
        self._cpu0 = cpu_times()
        self._sample()  # the idle baseline, before the client starts
        self.result.idle_rss_sum_kib = self.result.peak_rss_sum_kib
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.result.seconds = time.monotonic() - self._t0
        self.result.cpu_idle_pct = round(idle_pct_since(self._cpu0), 1)
        self._sample()  # one last look, so a short window still has a memory figure

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        r = self.result
        if self.port is not None:
            r.peak_sessions = max(r.peak_sessions, established(self.port))
        if self.pids is None:
            return
        tree = procs.descendants(self.pids())
        r.processes = max(r.processes, len(tree))
        rss = sum(_status_kib(pid, "VmRSS:") for pid in tree)
        r.peak_rss_sum_kib = max(r.peak_rss_sum_kib, rss)
        r.peak_hwm_kib = max([r.peak_hwm_kib, *(_status_kib(pid, "VmHWM:") for pid in tree)])
