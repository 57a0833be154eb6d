"""The vocabulary every extractor shares: text units, problems, the per-message budget.

An extractor turns the bytes of one part into a stream of :data:`Item`: :class:`TextUnit` for text
the detectors should read, :class:`Problem` for a place that could not be read. Containers (zip,
message) report a problem for one member and carry on with the others; a format that cannot be
read at all raises :class:`UnscannableError`, which the dispatcher turns into a :class:`Problem`.

Exceptions (all under :class:`relayguard.errors.RelayguardError`):

- UnscannableError         this place cannot be scanned; ``reason`` is safe to show (no content)
    - BudgetExceededError  the message's time budget is spent: the whole scan stops
        - NeedsWorkerError the message is more than an inline scan may take on (see Budget):
                           the scan stops and the caller starts it again in a worker
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from relayguard.config import ScanSettings
from relayguard.errors import RelayguardError


class UnscannableError(RelayguardError):
    """A place could not be scanned. The message is the reason and never quotes content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetExceededError(UnscannableError):
    """The time budget for the message is spent; scanning stops everywhere."""

    def __init__(self, reason: str = "time budget exceeded") -> None:
        super().__init__(reason)


_DIGITS = "0123456789"


class Cells:
    """Where each cell of a tabular :class:`TextUnit` starts, its reference and column header.

    Rows are joined with newlines and cells with tabs, so "same row" is "same line" for the
    detectors; these parallel lists let a match be traced back to its cell and header.

    A spreadsheet gives its header row as ``columns`` (column letters -> header) instead of a
    header per cell: the list is then built the first time it is asked for, by the process that
    runs the detectors (see :mod:`relayguard.detect.parallel`), not by the one reading the sheet.
    """

    __slots__ = ("_headers", "columns", "refs", "sep", "starts")

    def __init__(self, starts: list[int], refs: list[str], headers: list[str | None] | None = None,
                 sep: str = "!", *, columns: dict[str, str] | None = None) -> None:
        self.starts = starts  # offset of each cell in the unit's text, ascending
        self.refs = refs  # "C14" (spreadsheets) or "" where a source has no cell names
        self._headers = headers
        self.columns = columns
        self.sep = sep  # joins the unit's place and a cell ref: "Data!C14"

    @property
    def headers(self) -> list[str | None]:
        """The column header of each cell, when the source has one."""
        if self._headers is None:
            if self.columns is None:
                self._headers = [None] * len(self.starts)
            else:  # a cell's column is its reference without the row number (C-level maps)
                self._headers = list(map(self.columns.get, map(str.rstrip, self.refs, repeat(_DIGITS))))
        return self._headers

    def __getstate__(self) -> tuple[object, ...]:
        return (self.starts, self.refs, self._headers, self.sep, self.columns)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.starts, self.refs, self._headers, self.sep, self.columns = state  # type: ignore[assignment]

    def index(self, pos: int) -> int:
        """The index of the cell holding offset ``pos`` (-1 before the first cell)."""
        return bisect_right(self.starts, pos) - 1


@dataclass(frozen=True, slots=True)
class TextUnit:
    """A run of extracted text from one place (``where``), optionally with cell structure."""

    where: str
    text: str
    cells: Cells | None = None

    def units(self, budget: Budget) -> list[TextUnit]:
        """Itself (see :class:`Work`)."""
        return [self]


class NeedsWorkerError(BudgetExceededError):
    """Raised only by an inline budget: the message holds a format that may cost far more than
    its size suggests, or the slice of time the event loop gives it is spent. No finding comes
    of it; the scan is started again, from the beginning, in a worker."""


class Work(Protocol):
    """Text units, or what some are made of when making them is itself much of the work (the
    rows of a large sheet): the process that runs the detectors makes them."""

    def units(self, budget: Budget) -> list[TextUnit]: ...


@dataclass(frozen=True, slots=True)
class Problem:
    """A place that could not be scanned, with a reason that is safe to log."""

    where: str
    reason: str


Item = Work | Problem


@dataclass(slots=True)
class Budget:
    """The bounds of one scan: the limits, a monotonic deadline and running totals."""

    limits: ScanSettings
    deadline: float = 0.0
    parts: int = 0  # MIME parts seen
    members: int = 0  # archive members opened, across all archives
    decoded: int = 0  # bytes decoded or decompressed so far
    # An inline scan runs in the relay's event loop, which every other session waits on: its
    # deadline is a short slice, and formats that can inflate are refused (extract.dispatch).
    inline: bool = False
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, limits: ScanSettings, *, inline_slice: float | None = None) -> Budget:
        """The budget of one scan; with ``inline_slice`` (seconds), an inline one."""
        seconds = limits.time_budget if inline_slice is None else min(inline_slice, limits.time_budget)
        return cls(limits=limits, deadline=time.monotonic() + seconds, inline=inline_slice is not None)

    def check_time(self) -> None:
        """Raise :class:`BudgetExceededError` once the deadline has passed (an inline budget
        raises :class:`NeedsWorkerError`: its deadline is the loop's, not the message's)."""
        if time.monotonic() > self.deadline:
            if self.inline:
                raise NeedsWorkerError("inline slice spent")
            raise BudgetExceededError

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def add_decoded(self, n: int) -> None:
        """Count ``n`` more decoded bytes against the per-message total."""
        self.decoded += n
        if self.decoded > self.limits.max_decoded_bytes:
            raise UnscannableError("message over decoded size limit")


@dataclass(frozen=True, slots=True)
class Source:
    """One part or member to extract: its bytes and what the sender claims it is."""

    data: bytes
    where: str  # the place, e.g. "attachment:a.zip/b.csv"
    name: str = ""  # filename claimed by the sender (a hint, never the decision)
    ctype: str = ""  # Content-Type claimed by the sender (a hint, never the decision)
    depth: int = 0  # nesting of archives and messages above this one
    charset: str | None = None  # declared charset, for text


Dispatch = Callable[[Source, Budget], Iterator[Item]]
"""Extract any part: containers call back into the dispatcher for their members."""
