"""One measurement: a fresh sink, a fresh instance of one path, a warm-up, then the timed load.

Throughput is end-to-end: the clock starts before smtp-source connects and stops when the sink has
counted every message (and, for Postfix, its queue directories are empty), not when the client has
been answered. Both times are kept, so a relay that answers fast and delivers late shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import monitor
import paths
import procs
from messages import RECIPIENT, SENDER, Workload
from sink import Sink

BENCH = Path(__file__).resolve().parent
SESSIONS = 20
WARMUP = 20  # messages through each fresh instance before the clock starts (imports, caches, pools)
SETTLE_S = 3.0  # before the memory window: the idle baseline includes processes started in the background


@dataclass
class Result:
    path: str
    kind: str  # throughput | latency | memory
    workload: str
    repeat: int
    messages: int
    sessions: int
    ok: bool = False
    error: str | None = None
    delivered: int = 0
    client_s: float | None = None  # until the load generator had every reply
    e2e_s: float | None = None  # until the sink had every message (and Postfix's queue was empty)
    msgs_per_s: float | None = None  # end-to-end
    client_msgs_per_s: float | None = None
    cpu_idle_pct: float | None = None
    peak_sessions: int | None = None
    peak_rss_sum_kib: int | None = None
    idle_rss_sum_kib: int | None = None
    peak_hwm_kib: int | None = None
    processes: int | None = None
    server_cpu_s: float | None = None  # CPU time of the path's own processes in the window
    latency: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def smtp_source_argv(port: int, workload: Workload, count: int, sessions: int) -> list[str]:
    # One message per connection (no -d), as a practice's systems mostly send.
    return [
        "smtp-source",
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-F",
        str(workload.path),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"{procs.LOOPBACK}:{port}",
    ]


def _run_source(argv: list[str], timeout: float) -> str:
    """Run smtp-source to completion (bounded); its stderr names any reply that was not 2xx."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    tracked = procs.register(procs.Proc("smtp-source", proc))
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(tracked)
        return f"smtp-source still running after {timeout:.0f} s"
    procs.stop(tracked)
    text = err.decode(errors="replace").strip()
    return text.splitlines()[0][:200] if text else ""


def _wait_drained(server: paths.Server, deadline: float) -> bool:
    while not server.drained():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Bench:
    """Runs measurements of one kind against fresh instances; everything it starts, it stops."""

    def __init__(self, workdir: Path, warmup_msg: Workload) -> None:
        self.workdir = workdir
        self.warmup_msg = warmup_msg

    def _start(self, path: paths.Path_) -> tuple[Sink, paths.Server]:
        sink = Sink(self.workdir)
        try:
            server = path.start(sink.port, self.workdir)
        except BaseException:
            sink.stop()
            raise
        return sink, server

    def _warm(self, sink: Sink, server: paths.Server) -> None:
        """Push ``WARMUP`` messages through; a relay's first replies may be 4xx, so send again, bounded."""
        errors: list[str] = []
        for _attempt in range(3):
            err = _run_source(smtp_source_argv(server.port, self.warmup_msg, WARMUP, 5), timeout=60)
            if err:
                errors.append(err)
            reached, _ = sink.wait_for(WARMUP, timeout=30)
            if reached:
                return
        raise RuntimeError(
            f"warm-up: sink got {sink.count()}/{WARMUP} ({'; '.join(errors) or 'no client error'})"
        )

    def run(self, path: paths.Path_, result: Result, body: Any) -> Result:
        """Start, warm, call ``body(sink, server, result)``, stop. Errors become ``result.error``."""
        sink: Sink | None = None
        server: paths.Server | None = None
        try:
            sink, server = self._start(path)
            self._warm(sink, server)
            body(sink, server, result)
        except (RuntimeError, OSError, TimeoutError, ValueError, subprocess.SubprocessError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            if server is not None:
                server.stop()
            if sink is not None:
                sink.stop()
        return result

    def throughput(
        self, path: paths.Path_, workload: Workload, count: int, repeat: int, timeout: float
    ) -> Result:
        result = Result(path.key, "throughput", workload.key, repeat, count, SESSIONS)

        def body(sink: Sink, server: paths.Server, r: Result) -> None:
            base = sink.count()
            with monitor.Monitor(port=server.port, pids=server.pids) as mon:
                t0 = time.monotonic()
                err = _run_source(smtp_source_argv(server.port, workload, count, SESSIONS), timeout)
                r.client_s = time.monotonic() - t0
                reached, seen = sink.wait_for(base + count, timeout=max(1.0, t0 + timeout - time.monotonic()))
                drained = reached and _wait_drained(server, t0 + timeout)
                end = time.monotonic() if drained else seen
            r.delivered = sink.count() - base
            r.e2e_s = end - t0
            r.ok = reached and drained
            r.msgs_per_s = round(r.delivered / r.e2e_s, 1)
            r.client_msgs_per_s = round(count / r.client_s, 1)
            _copy_monitor(r, mon.result)
            if not r.ok:
                r.error = f"sink got {r.delivered}/{count} in {r.e2e_s:.0f} s" + (
                    f"; client: {err}" if err else ""
                )

        return self.run(path, result, body)

    def latency(
        self, path: paths.Path_, workload: Workload, count: int, repeat: int, timeout: float
    ) -> Result:
        result = Result(path.key, "latency", workload.key, repeat, count, SESSIONS)

        def body(sink: Sink, server: paths.Server, r: Result) -> None:
            out = self.workdir / f"latency-{path.key}-{repeat}.json"
            argv = [
                sys.executable,
                str(BENCH / "latency_client.py"),
                "--port",
                str(server.port),
                "--message",
                str(workload.path),
                "--sessions",
                str(SESSIONS),
                "--count",
                str(count),
                "--max-seconds",
                str(timeout),
                "--json",
                str(out),
            ]
            base = sink.count()
            with monitor.Monitor(port=server.port, pids=server.pids) as mon:
                t0 = time.monotonic()
                procs.run_checked(argv, timeout=timeout + 30)
                r.client_s = time.monotonic() - t0
                lat = json.loads(out.read_text())
                reached, seen = sink.wait_for(base + int(lat["accepted"]), timeout=timeout)
            r.latency = lat
            r.delivered = sink.count() - base
            r.e2e_s = seen - t0
            r.ok = reached and lat["failed"] == 0
            r.client_msgs_per_s = lat["client_msgs_per_s"]
            r.msgs_per_s = round(r.delivered / r.e2e_s, 1)
            _copy_monitor(r, mon.result)
            if not r.ok:
                r.error = f"{lat['failed']} not accepted {lat['failures']}; sink got {r.delivered}"[:300]

        return self.run(path, result, body)

    def memory(self, path: paths.Path_, workload: Workload, repeat: int, timeout: float) -> Result:
        """Peak memory of the relay's processes while one big message goes through."""
        result = Result(path.key, "memory", workload.key, repeat, 1, 1)

        def body(sink: Sink, server: paths.Server, r: Result) -> None:
            base = sink.count()
            time.sleep(SETTLE_S)  # worker processes a server starts in the background are up
            with monitor.Monitor(port=server.port, pids=server.pids, interval=0.02) as mon:
                t0 = time.monotonic()
                err = _run_source(smtp_source_argv(server.port, workload, 1, 1), timeout)
                r.client_s = time.monotonic() - t0
                reached, seen = sink.wait_for(base + 1, timeout=max(1.0, t0 + timeout - time.monotonic()))
                time.sleep(0.2)  # let the sampler see the post-delivery peak, if any
            r.delivered = sink.count() - base
            r.e2e_s = seen - t0
            r.ok = reached
            _copy_monitor(r, mon.result)
            if not reached:
                r.error = (
                    f"the big message did not reach the sink in {timeout:.0f} s ({err or 'no client error'})"
                )

        return self.run(path, result, body)


def _copy_monitor(r: Result, s: monitor.Sample) -> None:
    r.cpu_idle_pct = s.cpu_idle_pct
    r.peak_sessions = s.peak_sessions
    r.peak_rss_sum_kib = s.peak_rss_sum_kib or None
    r.idle_rss_sum_kib = s.idle_rss_sum_kib or None
    r.peak_hwm_kib = s.peak_hwm_kib or None
    r.processes = s.processes or None
    r.server_cpu_s = s.server_cpu_s
