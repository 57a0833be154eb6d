"""A second core for a large message: a helper process reads and detects part of it.

Scanning a large spreadsheet is reading rows (inflating, tokenising, building text units) and
running the detectors over them, and one message is scanned by one process. Once detection has
spent :data:`HELP_AFTER_S` on a message, ``scan_message`` forks a helper and sends it work: a
validated run of sheet rows (:class:`relayguard.extract.ooxml.SheetRun`), which the helper reads
into units and detects, or a unit of a table (csv). The scanning process goes on reading and
does the work itself whenever the helper already has enough queued. A 20 MB patient register
takes a little over half the time. Plain text is never sent: it is detected about as fast as
it could be pickled, and a helper would only add its memory. The relay's scan pool allows a
helper only to a message scanned while no other is (``scan.detect_helper``): when its workers
already keep the cores busy, a helper would gain nothing and cost its pickling.

The result is exactly the serial one. Each piece of work is tallied on its own (a small
:class:`Tally`, in the helper or here) and the tallies are merged in the order the work came,
which gives the same counts, places, samples, problems and finding order as tallying every hit
in order (see :meth:`Tally.merge`); work done here with nothing ahead of it is tallied directly.

Fork, not spawn: the helper needs only the detectors, the custom patterns and the budget, which
this process has already, and a fork costs milliseconds. It is a child of whatever process scans
(a scan worker, the CLI), lives for one message, and is killed if anything goes wrong; the work
it had is then done here, so a dead helper costs time, never a finding.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import pickle
import time
from collections import deque
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from relayguard.detect.custom import CustomRunner
from relayguard.detect.finders import builtin_hits
from relayguard.detect.tally import Tally
from relayguard.extract.base import Budget, BudgetExceededError, Work
from relayguard.extract.ooxml import SheetRun

HELP_AFTER_S = 0.1  # detection time on one message before a helper is worth its fork (~10 ms)
PIPE_BYTES = 1024 * 1024  # the pipe to the helper holds this much (Linux's default cap for it)
MAX_WAITING = 64  # pieces of work read but not yet merged: beyond this, wait for the helper
_FRAME = 16  # a message's length header in the pipe, and some slack
_OUT_OF_TIME = "budget"  # the helper's answer when the time budget ran out


def detect_into(tally: Tally, work: Work, budget: Budget, runner: CustomRunner) -> Tally:
    """Tally every hit of the built-in and custom detectors in ``work``'s units."""
    for unit in work.units(budget):
        tally.add_hits(unit, builtin_hits(unit.text, unit.cells))
        tally.add(unit, runner.run(unit, tally))
    return tally


def _serve(inbox: Connection, outbox: Connection, budget: Budget, runner: CustomRunner) -> None:
    """The helper: a tally for each piece of work received, until None."""
    with contextlib.suppress(EOFError, OSError):  # the scanning process is gone: so are we
        _answer(inbox, outbox, budget, runner)


def _answer(inbox: Connection, outbox: Connection, budget: Budget, runner: CustomRunner) -> None:
    strings: dict[int, list[str]] = {}
    while (message := inbox.recv()) is not None:
        if message[0] == "strings":
            strings[message[1]] = message[2]
            continue
        work, key = message[1], message[2]
        if key is not None:
            work = replace(work, strings=strings[key])
        try:
            outbox.send(detect_into(Tally(), work, budget, runner))
        except BudgetExceededError:
            outbox.send(_OUT_OF_TIME)


def _widen(conn: Connection) -> int:
    """Grow the pipe under ``conn`` to PIPE_BYTES if the system lets us; its capacity."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    try:
        return fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ)
    except OSError:
        return 64 * 1024


class _Helper:
    """The helper process and a pipe each way. Work is sent only when it fits in what the pipe
    to the helper has room for: a write that blocked would stall the reading, and could deadlock
    with a helper blocked writing a large tally back. A workbook's shared strings go once, and
    only to an idle helper (which reads as they are written, however large)."""

    def __init__(self, budget: Budget, runner: CustomRunner) -> None:
        ctx = multiprocessing.get_context("fork")
        inbox, self.inbox = ctx.Pipe(duplex=False)
        self.outbox, outbox = ctx.Pipe(duplex=False)
        self.capacity = _widen(self.inbox)
        _widen(outbox)
        self.proc: BaseProcess = ctx.Process(target=_serve, args=(inbox, outbox, budget, runner),
                                             daemon=True, name="relayguard-detect")
        self.proc.start()
        inbox.close()
        outbox.close()
        self.queued: deque[int] = deque()  # bytes of each piece sent and not yet answered
        self.guess = 0  # the size of the last piece sent: whether another may fit
        self.strings: dict[int, list[str]] = {}  # sent, by id (held here, so no id is reused)

    def send(self, work: Work) -> bool:
        """Queue ``work`` at the helper; False (and nothing sent) if there is no room for it."""
        in_pipe = sum(self.queued)
        if in_pipe + self.guess > self.capacity:
            return False
        key = None
        if isinstance(work, SheetRun):
            key = id(work.strings)
            if key not in self.strings:
                if self.queued or not self._post(("strings", key, work.strings)):
                    return False
                self.strings[key] = work.strings
            work = replace(work, strings=[])
        blob = pickle.dumps(("work", work, key), protocol=pickle.HIGHEST_PROTOCOL)
        self.guess = len(blob) + _FRAME
        if self.queued and in_pipe + self.guess > self.capacity:
            return False  # (an idle helper reads as we write: the first piece may be any size)
        if not self._post_bytes(blob):
            return False
        self.queued.append(self.guess)
        return True

    def _post(self, message: object) -> bool:
        return self._post_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _post_bytes(self, blob: bytes) -> bool:
        try:
            self.inbox.send_bytes(blob)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return self.outbox.poll(0)

    def receive(self, budget: Budget) -> Tally | None:
        """The oldest piece's tally; None if the helper is gone. Waits no longer than the budget."""
        try:
            if not self.outbox.poll(max(0.0, budget.remaining())):
                raise BudgetExceededError
            answer: Tally | str = self.outbox.recv()
        except (OSError, EOFError):
            return None
        if answer == _OUT_OF_TIME:
            raise BudgetExceededError
        self.queued.popleft()
        return answer if isinstance(answer, Tally) else None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.inbox.send(None)
        self.proc.join(timeout=1)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.inbox.close()
        self.outbox.close()


def _tabular(work: Work) -> bool:
    """Rows of a sheet or a table: what the helper is for. Plain text is detected about as fast
    as it is pickled, and a helper forked for it would only add its memory."""
    return isinstance(work, SheetRun) or getattr(work, "cells", None) is not None


class Detection:
    """Runs the detectors over a message's work into ``tally``, on a helper once the message is
    large, merging each piece's tally in the order the pieces came."""

    def __init__(self, budget: Budget, tally: Tally, runner: CustomRunner, *, helper: bool) -> None:
        self.budget = budget
        self.tally = tally
        self.runner = runner
        self.enabled = helper
        self.spent = 0.0  # seconds of detection in this process so far
        self.helper: _Helper | None = None
        # Work in the order it came, with its tally, or None while the helper has it.
        self.waiting: deque[tuple[Work, Tally | None]] = deque()

    def add(self, work: Work) -> None:
        helper = self._helper() if _tabular(work) else None
        if helper is not None and helper.send(work):
            self.waiting.append((work, None))
        else:
            started = time.perf_counter()
            if self.waiting:
                self.waiting.append((work, self._detect(Tally(), work)))
            else:
                self._detect(self.tally, work)  # nothing ahead of it: straight into the message's
            self.spent += time.perf_counter() - started
        self._settle(block=len(self.waiting) > MAX_WAITING)

    def finish(self) -> None:
        """Merge what is still out (the caller then closes)."""
        while self.waiting:
            self._settle(block=True)

    def close(self) -> None:
        """Stop the helper, if any; what it still had is then done here (see :meth:`_settle`)."""
        if self.helper is not None:
            self.helper.stop()
            self.helper = None

    def _detect(self, tally: Tally, work: Work) -> Tally:
        return detect_into(tally, work, self.budget, self.runner)

    def _helper(self) -> _Helper | None:
        if self.helper is None and self.enabled and self.spent >= HELP_AFTER_S:
            self.enabled = False  # one try per message: a failed fork is not retried
            try:
                self.helper = _Helper(self.budget, self.runner)
            except OSError:
                self.helper = None
        return self.helper

    def _settle(self, *, block: bool) -> None:
        """Merge the pieces at the head of the queue whose tallies are in."""
        while self.waiting:
            work, delta = self.waiting[0]
            if delta is None:
                if self.helper is None:
                    delta = self._detect(Tally(), work)  # the helper died with it: do it here
                elif block or self.helper.ready():
                    delta = self.helper.receive(self.budget)
                    if delta is None:
                        self.close()  # it died: its work is done here from now on
                        continue
                else:
                    return
            self.waiting.popleft()
            self.tally.merge(delta)
            block = False
