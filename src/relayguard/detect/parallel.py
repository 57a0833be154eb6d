"""A second core for the detectors while a large message is being read.

Reading a spreadsheet (inflating, parsing, building text units) and running the detectors over
its units take about the same CPU time, and one message is scanned by one process. Once the
detectors have spent :data:`HELP_AFTER_S` on a message, ``scan_message`` forks a helper process
and sends it units to run the built-in detectors on, while it goes on reading: a 20 MB patient
register takes about 0.6 of the time. Plain text is detected faster than a unit can be pickled
and sent, and never gets that far.

The result is exactly the serial one. Each unit's hits are tallied on their own (a small
:class:`Tally`, in the helper or here) and those tallies are merged in the order the units were
read, which gives the same counts, places, samples and finding order as tallying every hit in
order (see :meth:`Tally.merge`).

Fork, not spawn: the helper needs nothing but the detectors, which this process has imported
already, and a fork costs milliseconds. It is a child of whatever process scans (a scan worker,
the CLI), lives for one message, and is killed if anything goes wrong; a unit it was given is
then detected here instead, so a dead helper costs time, never a finding.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from relayguard.detect.finders import builtin_hits
from relayguard.detect.tally import Tally
from relayguard.extract.base import Budget, BudgetExceededError, TextUnit

HELP_AFTER_S = 0.25  # detection time on one message before a helper is worth its fork (~10 ms)
IN_FLIGHT = 2  # units queued at the helper: one it works on, one waiting, so it never idles
MAX_WAITING = 16  # units read but not yet merged: beyond this, wait for the helper


def tally_unit(unit: TextUnit) -> Tally:
    """The built-in detectors' hits in ``unit``, tallied on their own."""
    delta = Tally()
    delta.add_hits(unit, builtin_hits(unit.text, unit.cells))
    return delta


def _serve(conn: Connection) -> None:
    """The helper: a tally for each unit received, until None."""
    while (unit := conn.recv()) is not None:
        conn.send(tally_unit(unit))


class _Helper:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(target=_serve, args=(child,), daemon=True,
                                             name="relayguard-detect")
        self.proc.start()
        child.close()

    def send(self, unit: TextUnit) -> bool:
        try:
            self.conn.send(unit)
        except OSError:
            return False
        return True

    def receive(self, budget: Budget) -> Tally | None:
        """The next unit's tally; None if the helper is gone. Waits no longer than the budget."""
        try:
            if not self.conn.poll(max(0.0, budget.remaining())):
                raise BudgetExceededError
            delta: Tally = self.conn.recv()
        except (OSError, EOFError):
            return None
        return delta

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=1)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class Detection:
    """Runs the built-in detectors over a message's units, on a helper once the message is large,
    and hands each unit's tally to ``merge`` in the order the units came."""

    def __init__(self, budget: Budget, merge: Callable[[TextUnit, Tally | None], None], *,
                 helper: bool) -> None:
        self.budget = budget
        self.merge = merge
        self.enabled = helper
        self.spent = 0.0  # seconds of detection in this process so far
        self.helper: _Helper | None = None
        # Units in reading order, with their tally, or None while the helper has it.
        self.waiting: deque[tuple[TextUnit, Tally | None]] = deque()
        self.in_flight = 0

    def add(self, unit: TextUnit) -> None:
        helper = self._helper()
        if helper is not None and self.in_flight < IN_FLIGHT and helper.send(unit):
            self.waiting.append((unit, None))
            self.in_flight += 1
        else:
            started = time.perf_counter()
            if self.waiting:
                self.waiting.append((unit, tally_unit(unit)))
            else:
                self.merge(unit, None)  # nothing ahead of it: tally straight into the message's
            self.spent += time.perf_counter() - started
        self._settle(block=len(self.waiting) > MAX_WAITING)

    def finish(self) -> None:
        """Merge what is still out; stop the helper."""
        try:
            while self.waiting:
                self._settle(block=True)
        finally:
            self.close()

    def close(self) -> None:
        if self.helper is not None:
            self.helper.stop()
            self.helper = None

    def _helper(self) -> _Helper | None:
        if self.helper is None and self.enabled and self.spent >= HELP_AFTER_S:
            self.enabled = False  # one try per message: a failed fork is not retried
            try:
                self.helper = _Helper()
            except OSError:
                self.helper = None
        return self.helper

    def _settle(self, *, block: bool) -> None:
        """Merge the units at the head of the queue whose tallies are in."""
        while self.waiting:
            unit, delta = self.waiting[0]
            if delta is None:
                if self.helper is None:
                    delta = tally_unit(unit)  # the helper died with it: detect it here
                elif block or self.helper.conn.poll(0):
                    delta = self.helper.receive(self.budget)
                    self.in_flight -= 1
                    if delta is None:
                        self._lost()
                        continue
                else:
                    return
            self.waiting.popleft()
            self.merge(unit, delta)
            block = False

    def _lost(self) -> None:
        """The helper died: what it had is detected here (see :meth:`_settle`)."""
        if self.helper is not None:
            self.helper.stop()
            self.helper = None
        self.in_flight = 0
