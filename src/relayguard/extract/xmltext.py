"""Streaming text out of XML package parts (OOXML, ODF), with every DTD refused.

Documents never need a DTD, so any DTD is refused outright: a billion-laughs part fails at its
first bytes instead of expanding. Finished subtrees are dropped as the parse goes, so memory stays
near the size of one paragraph rather than the whole part.

Speed: defusedxml hooks expat's DTD handlers through the pure-Python ElementTree parser, which is
about twice as slow as the C one. Parts in UTF-8 (or ASCII, Latin-1: what every Office suite
writes) go to the C parser instead, after their bytes are checked for ``<!DOCTYPE`` and
``<!ENTITY``. That check is enough: entities can only be declared inside a DOCTYPE, and in an
ASCII-compatible encoding a DOCTYPE cannot be spelled with other bytes, so without one there is
nothing to expand (an undeclared entity is a parse error: unscannable). Any other encoding, which
could spell the declaration differently, goes through defusedxml as before.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, cast
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from relayguard.extract.base import Budget, TextUnit, UnscannableError

UNIT_CHARS = 256 * 1024
# Small feeds keep few parsed elements alive at once: with 64 KiB feeds thousands of them outlive
# a young-generation collection, get promoted, and trigger full collections (2.5x slower parsing).
READ_CHUNK = 4 * 1024
_Event = Literal["start", "end"]
_ENCODING_RE = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_ASCII_SUPERSETS = frozenset({"utf-8", "ascii", "latin-1", "iso8859-1"})
_LONGEST_DECLARATION = len(b"<!DOCTYPE") - 1


def qualify(ns: str | tuple[str, ...], *names: str) -> frozenset[str]:
    """``{ns}name`` tags for each name under each namespace (transitional and strict OOXML)."""
    spaces = (ns,) if isinstance(ns, str) else ns
    return frozenset(f"{{{space}}}{name}" for space in spaces for name in names)


def events(stream: IO[bytes], *, kind: str,
           which: tuple[_Event, ...] = ("end",)) -> Iterator[tuple[str, Any]]:
    """``iterparse`` events over ``stream``, with unsafe or broken XML as :class:`UnscannableError`."""
    for batch in event_batches(stream, kind=kind, which=which):
        yield from batch


def event_batches(stream: IO[bytes], *, kind: str,
                  which: tuple[_Event, ...] = ("end",)) -> Iterator[list[tuple[str, Any]]]:
    """The events of :func:`events`, as one list per chunk fed to the parser.

    A worksheet has millions of elements; a list per chunk spares each event a trip through
    nested generators, which costs more than the caller's own look at the event.
    """
    chunk = stream.read(READ_CHUNK)
    screened = _ascii_compatible(chunk)
    parser = XMLPullParser(which) if screened else XMLPullParser(which, _parser=DefusedXMLParser(
        forbid_dtd=True, forbid_entities=True, forbid_external=True))
    carry = b""
    try:
        while chunk:
            if screened:
                carry = _refuse_declarations(carry + chunk, kind)
            parser.feed(chunk)
            yield _drain(parser)
            chunk = stream.read(READ_CHUNK)
        parser.close()
        yield _drain(parser)
    except DefusedXmlException as exc:
        raise UnscannableError(f"unsafe xml in {kind}") from exc
    except ParseError as exc:
        raise UnscannableError(f"corrupt {kind}") from exc


def _drain(parser: XMLPullParser[Any]) -> list[tuple[str, Any]]:
    # Only "start"/"end" are requested, so every event is an (event, element) pair. The list is
    # built before the caller sees any event: a parse error inside the generator surfaces here,
    # under the except clauses above.
    return cast("list[tuple[str, Any]]", list(parser.read_events()))


def _ascii_compatible(head: bytes) -> bool:
    """True when ``head`` starts a part whose markup is plain ASCII bytes (UTF-8, ASCII, Latin-1)."""
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):]
    if b"\0" in head[:4]:
        return False  # UTF-16/32, with or without a byte order mark
    if not head.startswith(b"<?xml"):
        return not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    end = head.find(b"?>")
    if end < 0:
        return False
    declared = _ENCODING_RE.search(head, 0, end)
    if declared is None:
        return True  # no declaration: UTF-8
    try:
        name = codecs.lookup(declared.group(1).decode("ascii")).name
    except LookupError:
        return False
    return name in _ASCII_SUPERSETS


def _refuse_declarations(data: bytes, kind: str) -> bytes:
    """Raise on a DTD or entity declaration in ``data``; returns the tail to prefix the next chunk."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise UnscannableError(f"unsafe xml in {kind}")
    return data[-_LONGEST_DECLARATION:]  # so a declaration split across two reads is still seen


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
