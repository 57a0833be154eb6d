"""Building tabular units: rows joined by newlines, cells by tabs, each cell traceable.

Spreadsheets and csv files share this so that the detectors see one row as one line (a date of
birth in the same row supports an NHS number) and can find each match's cell and column header.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate
from operator import add

from relayguard.extract.base import Budget, Cells, TextUnit

UNIT_CHARS = 16384  # rows are batched into units of about this size


class TableWriter:
    """Accumulates rows of one table (one place) and hands out bounded :class:`TextUnit` s."""

    def __init__(self, where: str, budget: Budget, *, sep: str = "!") -> None:
        self.where = where
        self.budget = budget
        self.sep = sep
        self.columns: dict[str, str] | None = None  # a sheet's header row: see set_columns()
        self._reset()

    def _reset(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._starts: list[int] = []
        self._refs: list[str] = []
        self._headers: list[str | None] = []

    def set_columns(self, columns: dict[str, str]) -> TextUnit | None:
        """Head the rows from now on with ``columns`` (column letters -> header), instead of a
        header per cell; returns the rows collected before, which it does not head."""
        unit = self.flush()
        self.columns = columns
        return unit

    def add_row(self, values: list[str], refs: list[str],
                headers: list[str | None] | None = None) -> TextUnit | None:
        """Append one row, with a header per cell or none (then :attr:`columns` head it);
        returns a full unit when the batch reaches its size."""
        if not values:
            return None
        size = self._size
        # Each value starts after the ones before it and their separators: the running total of
        # their lengths plus the count of values before it. Built by C-level iterators, since a
        # sheet has millions of cells and a Python loop per cell is most of what a row costs.
        offsets = list(accumulate(map(len, values), initial=size))
        self._starts.extend(map(add, offsets, range(len(values))))
        self._parts.append("\t".join(values))
        self._parts.append("\n")
        self._size = size = offsets[-1] + len(values)
        self._refs.extend(refs)
        if headers is not None:
            self._headers.extend(headers)
        return self.flush() if size >= UNIT_CHARS else None

    def flush(self) -> TextUnit | None:
        """The rows collected so far as one unit, or None when there are none."""
        if not self._starts:
            return None
        self.budget.check_time()
        unit = TextUnit(self.where, "".join(self._parts),
                        Cells(self._starts, self._refs, self._headers or None, self.sep,
                              columns=self.columns))
        self._reset()
        return unit

    def rows(self, rows: Iterator[tuple[list[str], list[str], list[str | None] | None]],
             ) -> Iterator[TextUnit]:
        """Units for every row of ``rows`` (values, refs, headers or None), the remainder last."""
        for values, refs, headers in rows:
            unit = self.add_row(values, refs, headers)
            if unit is not None:
                yield unit
        last = self.flush()
        if last is not None:
            yield last


def locate(unit: TextUnit, pos: int) -> str:
    """The place of offset ``pos`` in ``unit``: its ``where``, plus the cell for tabular units."""
    cells = unit.cells
    if cells is None or not cells.starts:
        return unit.where
    i = cells.index(pos)
    ref = cells.refs[i] if i >= 0 else ""
    return f"{unit.where}{cells.sep}{ref}" if ref else unit.where
