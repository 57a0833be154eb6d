"""``serve`` with ``smtp.processes`` > 1: several relay processes on one port (SO_REUSEPORT).

One Python process handles SMTP on one core; the kernel spreads new connections over every
process listening with SO_REUSEPORT. Each child is a whole relay (front, engine, delivery) with
its own lease-owner name (``<instance>#<n>``); the store stays the one source of truth and its
transactions already serialise instances. Only child 0 runs the web UI and the periodic jobs.

The parent only supervises: it forwards SIGTERM/SIGINT/SIGHUP, restarts a child that dies (its
successor, under the same name, frees the leases the dead one held), and gives up, stopping
the rest, when a child exits on its own right at start-up (port taken, policy broken): a crash
loop helps no one.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from relayguard.log import get_logger

log = get_logger("relayguard.supervisor")

STARTUP_GRACE = 5.0  # a child exiting sooner (not killed) failed to start: stop all, exit with its code
RESTART_PAUSE = 1.0  # before a crashed child is started again
STOP_TIMEOUT = 30.0  # then SIGKILL


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal n -> 128 + n, as shells report


class Supervisor:
    def __init__(self, count: int, run_child: Callable[[int], int]) -> None:
        self.count = count
        self.run_child = run_child  # run_child(index) -> exit code; runs in the forked child
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
        self.stopping = False

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child: default signal handling, then the relay; never returns
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = self.run_child(index)
            finally:
                # What interpreter exit does and os._exit skips: multiprocessing's finalizers
                # (its own Process calls this private function the same way). Without them the
                # scan pool's semaphores stay registered, and the resource tracker outlived the
                # relay, then warned of them as leaked.
                multiprocessing.util._exit_function()  # type: ignore[attr-defined]
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = (index, time.monotonic())

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self) -> int:
        """Start the children and supervise them until told to stop; the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        for index in range(self.count):
            self._spawn(index)
        log.info("supervisor.started", processes=self.count, pids=sorted(self.children))
        result = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
            index, started = self.children.pop(pid)
            code = _exit_code(status)
            if self.stopping:
                result = max(result, code)
                continue
            # Exiting on its own right after the start is a failed start (port taken, policy
            # broken: it said why); killed by a signal, it is replaced like any crash.
            if not os.WIFSIGNALED(status) and time.monotonic() - started < STARTUP_GRACE:
                log.error("supervisor.child_failed_at_start", process=index, exit_code=code)
                result = code or 1
                self._stop_all()
                continue
            log.error("supervisor.child_died", process=index, exit_code=code,
                      note="restarted; its successor frees the leases it held")
            time.sleep(RESTART_PAUSE)
            if not self.stopping:
                self._spawn(index)
        return result

    def _stop_all(self) -> None:
        self.stopping = True
        self._forward(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.children):
            os.kill(pid, signal.SIGKILL)
