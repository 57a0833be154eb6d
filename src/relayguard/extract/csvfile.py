"""csv and tsv: sniff the delimiter, keep the header row so detectors can use column names."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

from relayguard.extract.base import Budget, Source, TextUnit, UnscannableError
from relayguard.extract.table import TableWriter
from relayguard.extract.text import decode

_DELIMITERS = "\t,;|"
# A header row names columns: it has letters and no long digit runs (identifiers, dates).
_HEADERISH = re.compile(r"[A-Za-z]")
_DATAISH = re.compile(r"\d{4}")


def sniff_delimiter(sample: str) -> str:
    """The delimiter that splits the first lines most consistently (comma when unsure)."""
    lines = [ln for ln in sample.splitlines()[:20] if ln.strip()]
    best, best_score = ",", 0
    for delim in _DELIMITERS:
        counts = [ln.count(delim) for ln in lines]
        if not counts or min(counts) == 0:
            continue
        score = min(counts) * (2 if len(set(counts)) == 1 else 1)
        if score > best_score:
            best, best_score = delim, score
    return best


def _is_header(row: list[str]) -> bool:
    cells = [c for c in row if c.strip()]
    return bool(cells) and all(_HEADERISH.search(c) and not _DATAISH.search(c) for c in cells)


def extract_csv(src: Source, budget: Budget, charset: str | None = None) -> Iterator[TextUnit]:
    text = decode(src.data, charset)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text[:8192]))
    writer = TableWriter(src.where, budget, sep=":")
    try:
        yield from writer.rows(_rows(reader))
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise UnscannableError("corrupt csv") from exc


def _rows(reader: Iterator[list[str]]) -> Iterator[tuple[list[str], list[str], list[str | None]]]:
    headers: list[str | None] = []
    for line, row in enumerate(reader, start=1):
        if line == 1 and _is_header(row):
            headers = list(row)
        cols = len(row)
        row_headers = headers[:cols] if len(headers) >= cols else headers + [None] * (cols - len(headers))
        yield row, [f"row {line}"] * cols, row_headers
