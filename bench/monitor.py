"""What the machine was doing during one measurement: CPU idle, open sessions, the server's memory and
the CPU time its processes used.

A background thread samples /proc while the load runs. CPU idle comes from /proc/stat deltas over the
whole window (all cores), so a figure taken while another engineer's job ate a core shows it. The
server's CPU time is what its processes themselves ran: on a shared machine it moves far less from run
to run than messages a second, which a neighbour's job lowers by taking turns on the cores.
"""

from __future__ import annotations

import os
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


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` itself (not its reaped children), in clock ticks."""
    try:
        fields = procs.stat_fields(pid)
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


TICKS_PER_S = os.sysconf("SC_CLK_TCK")


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
    # CPU seconds the server's processes ran in the window: each process's time at its last sample
    # less its time at the first (0 for one started in the window). A process that exits loses what
    # it ran since its last sample (at most ``interval``).
    server_cpu_s: float | None = None
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
        self._ticks_first: dict[int, int] = {}
        self._ticks_last: dict[int, int] = {}

    def __enter__(self) -> Monitor:
        self._t0 = time.monotonic()
        self._cpu0 = cpu_times()
        self._sample()  # the idle baseline, before the client starts
        self.result.idle_rss_sum_kib = self.result.peak_rss_sum_kib
        self._ticks_first = dict(self._ticks_last)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.result.seconds = time.monotonic() - self._t0
        self.result.cpu_idle_pct = round(idle_pct_since(self._cpu0), 1)
        self._sample()  # one last look, so a short window still has a memory figure
        if self.pids is not None:
            ticks = sum(t - self._ticks_first.get(pid, 0) for pid, t in self._ticks_last.items())
            self.result.server_cpu_s = round(ticks / TICKS_PER_S, 2)

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
        for pid in tree:
            ticks = _cpu_ticks(pid)
            if ticks is not None:
                self._ticks_last[pid] = ticks
