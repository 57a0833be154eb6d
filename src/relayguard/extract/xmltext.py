"""Streaming text out of XML package parts (OOXML, ODF) through defusedxml.

Documents never need a DTD, so any DTD is refused outright: a billion-laughs part fails at its
first bytes instead of expanding. Finished subtrees are dropped as the parse goes, so memory stays
near the size of one paragraph rather than the whole part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from relayguard.extract.base import Budget, TextUnit, UnscannableError

UNIT_CHARS = 256 * 1024


def qualify(ns: str | tuple[str, ...], *names: str) -> frozenset[str]:
    """``{ns}name`` tags for each name under each namespace (transitional and strict OOXML)."""
    spaces = (ns,) if isinstance(ns, str) else ns
    return frozenset(f"{{{space}}}{name}" for space in spaces for name in names)


def events(stream: IO[bytes], *, kind: str, which: tuple[str, ...] = ("end",)) -> Iterator[tuple[str, Any]]:
    """``iterparse`` events over ``stream``, with unsafe or broken XML as :class:`UnscannableError`."""
    try:
        yield from iterparse(stream, events=which, forbid_dtd=True, forbid_entities=True,
                             forbid_external=True)
    except DefusedXmlException as exc:
        raise UnscannableError(f"unsafe xml in {kind}") from exc
    except ParseError as exc:
        raise UnscannableError(f"corrupt {kind}") from exc


@dataclass(frozen=True, slots=True)
class Layout:
    """Which elements of a format hold text and how its paragraphs and tables are delimited."""

    para: frozenset[str]  # at its end, a paragraph's text is emitted and a line ends
    text: frozenset[str] = frozenset()  # elements whose own text is content
    cell: frozenset[str] = frozenset()  # table cells end with a tab (paragraphs in them: a space)
    row: frozenset[str] = frozenset()  # table rows end with a newline
    mixed: bool = False  # ODF: paragraph content is mixed (text plus children's tails)
    cell_value: str | None = None  # attribute holding a cell's raw value (ODF office:value)


def _para_text(elem: Element, layout: Layout) -> str:
    if layout.mixed:
        return "".join(elem.itertext())
    return "".join(t.text or "" for t in elem.iter() if t.tag in layout.text)


class _Collector:
    """Accumulates text pieces and cuts them into bounded units."""

    def __init__(self, where: str, budget: Budget) -> None:
        self.where, self.budget = where, budget
        self.parts: list[str] = []
        self.size = 0

    def add(self, *pieces: str) -> TextUnit | None:
        self.parts.extend(pieces)
        self.size += sum(len(p) for p in pieces)
        return self.take() if self.size >= UNIT_CHARS else None

    def take(self) -> TextUnit | None:
        text = "".join(self.parts)
        self.parts, self.size = [], 0
        self.budget.check_time()
        return TextUnit(self.where, text) if text.strip() else None


def layout_text(stream: IO[bytes], layout: Layout, *, where: str, kind: str,
                budget: Budget) -> Iterator[TextUnit]:
    """Text units of one XML part read with ``layout``."""
    out = _Collector(where, budget)
    stack: list[Element] = []
    in_para = in_cell = 0
    for event, elem in events(stream, kind=kind, which=("start", "end")):
        tag = elem.tag
        if event == "start":
            stack.append(elem)
            in_para += tag in layout.para
            in_cell += tag in layout.cell
            continue
        stack.pop()
        unit = None
        if tag in layout.para:
            in_para -= 1
            unit = out.add(_para_text(elem, layout), " " if in_cell else "\n")
            _clear_keep_tail(elem)
        elif tag in layout.cell:
            in_cell -= 1
            value = elem.get(layout.cell_value) if layout.cell_value else None
            unit = out.add(f" {value}\t" if value else "\t")
        elif tag in layout.row:
            unit = out.add("\n")
        if not in_para and stack:
            # Drop finished subtrees. Siblings the parser has already begun stay alive through
            # its own stack and our pending events, so nothing still unread is lost.
            del stack[-1][:]
        if unit is not None:
            yield unit
    last = out.take()
    if last is not None:
        yield last


def _clear_keep_tail(elem: Element) -> None:
    tail = elem.tail
    elem.clear()
    elem.tail = tail  # in mixed content the tail is the parent paragraph's text
