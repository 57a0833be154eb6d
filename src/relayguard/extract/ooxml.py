"""Office Open XML: xlsx/xlsm, docx and pptx, read part by part from the zip, streaming.

Workbooks are not loaded with openpyxl: its memory grows with the whole workbook, and it skips
places where data hides. Every worksheet part is read (hidden, very hidden, even one no longer
listed in the workbook), plus shared and inline strings, comments, chart caches, drawings' text
boxes, pivot caches and defined names.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import IO
from xml.etree.ElementTree import Element

from relayguard.extract import sheetxml
from relayguard.extract.archive import SafeZip
from relayguard.extract.base import Budget, Source, TextUnit
from relayguard.extract.sheetxml import cell_value, number_text
from relayguard.extract.table import TableWriter
from relayguard.extract.xmltext import Layout, event_batches, events, layout_text, qualify

_SML = ("http://schemas.openxmlformats.org/spreadsheetml/2006/main",
        "http://purl.oclc.org/ooxml/spreadsheetml/main")
_REL = ("http://schemas.openxmlformats.org/officeDocument/2006/relationships",
        "http://purl.oclc.org/ooxml/officeDocument/relationships")
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_W = ("http://schemas.openxmlformats.org/wordprocessingml/2006/main",
      "http://purl.oclc.org/ooxml/wordprocessingml/main")
_A = ("http://schemas.openxmlformats.org/drawingml/2006/main", "http://purl.oclc.org/ooxml/drawingml/main")
_C = ("http://schemas.openxmlformats.org/drawingml/2006/chart", "http://purl.oclc.org/ooxml/drawingml/chart")
_P = ("http://schemas.openxmlformats.org/presentationml/2006/main",
      "http://purl.oclc.org/ooxml/presentationml/main")

_ROW, _C_TAG, _V, _T, _IS = (qualify(_SML, n) for n in ("row", "c", "v", "t", "is"))
_SI, _SHEET, _DEFINED = (qualify(_SML, n) for n in ("si", "sheet", "definedName"))
_RID = frozenset(f"{{{ns}}}id" for ns in _REL)
_RELATIONSHIP = f"{{{_PKG_REL}}}Relationship"

_DOCX = Layout(para=qualify(_W, "p"), text=qualify(_W, "t", "delText"), cell=qualify(_W, "tc"),
               row=qualify(_W, "tr"))
_DRAWING = Layout(para=qualify(_A, "p"), text=qualify(_A, "t"), cell=qualify(_A, "tc"),
                  row=qualify(_A, "tr"))
_CHART = Layout(para=qualify(_A, "p") | qualify(_C, "pt"), text=qualify(_A, "t") | qualify(_C, "v"))
_COMMENTS = Layout(para=qualify(_SML, "comment") | qualify(_P, "cm"),
                   text=qualify(_SML, "t") | qualify(_P, "text")
                   | frozenset({"{http://schemas.microsoft.com/office/spreadsheetml/2018/threadedcomments}text"}))

_DOCX_PARTS = re.compile(
    r"word/(?:glossary/)?(document|header\d*|footer\d*|comments\w*|footnotes|endnotes)\.xml")
_PPTX_PARTS = re.compile(r"ppt/(?:slides/(slide\d+)|notesSlides/(notesSlide\d+)|comments/(\w+))\.xml")
_XLSX_EXTRA = re.compile(
    r"xl/(?:(?:comments/)?(comments?\d*)|threadedComments/(\w+)|charts/(chart\d+)|drawings/(drawing\d+))\.xml")
_PIVOT = re.compile(r"xl/pivotCache/(pivotCache\w+)\.xml")
_DIGITS = "0123456789"


def _layout_units(pkg: SafeZip, name: str, layout: Layout, *, where: str, kind: str,
                  budget: Budget) -> Iterator[TextUnit]:
    with pkg.stream(name) as stream:
        yield from layout_text(stream, layout, where=where, kind=kind, budget=budget)


def extract_docx(src: Source, budget: Budget) -> Iterator[TextUnit]:
    """Body, tables, headers, footers, comments, footnotes and endnotes (tracked deletions too)."""
    pkg = SafeZip(src.data, budget, kind="docx")
    for name in pkg.names():
        m = _DOCX_PARTS.fullmatch(name)
        if m:
            yield from _layout_units(pkg, name, _DOCX, where=f"{src.where}/{m.group(1)}", kind="docx",
                                     budget=budget)


def extract_pptx(src: Source, budget: Budget) -> Iterator[TextUnit]:
    """Slides (text boxes, tables), speaker notes and comments."""
    pkg = SafeZip(src.data, budget, kind="pptx")
    for name in pkg.names():
        m = _PPTX_PARTS.fullmatch(name)
        if m:
            layout = _COMMENTS if m.group(3) else _DRAWING
            place = m.group(1) or m.group(2) or m.group(3)
            yield from _layout_units(pkg, name, layout, where=f"{src.where}/{place}", kind="pptx",
                                     budget=budget)


def extract_xlsx(src: Source, budget: Budget) -> Iterator[TextUnit | SheetRun]:
    """Every sheet's cells, then comments, charts, drawings, pivot caches and defined names."""
    pkg = SafeZip(src.data, budget, kind="xlsx")
    book = _Workbook(pkg, budget)
    for part, sheet in book.sheet_parts():
        yield from _sheet_units(partial(pkg.stream, part), book.strings,
                                TableWriter(f"{src.where}/{sheet}", budget))
    for name in pkg.names():
        m = _XLSX_EXTRA.fullmatch(name)
        if m:
            layout = _COMMENTS if (m.group(1) or m.group(2)) else _CHART if m.group(3) else _DRAWING
            place = next(g for g in m.groups() if g)
            yield from _layout_units(pkg, name, layout, where=f"{src.where}/{place}", kind="xlsx",
                                     budget=budget)
        elif _PIVOT.fullmatch(name):
            yield from _pivot_values(pkg, name, f"{src.where}/pivot", budget)
    if book.names:
        yield TextUnit(f"{src.where}/names", "\n".join(book.names))


class _Workbook:
    """The workbook part: sheet names by part, defined names, and the shared string table."""

    def __init__(self, pkg: SafeZip, budget: Budget) -> None:
        self.pkg, self.budget = pkg, budget
        targets = self._relationships("xl/_rels/workbook.xml.rels")
        self.sheets: dict[str, str] = {}  # part name -> sheet name
        self.names: list[str] = []
        self.strings: list[str] = []
        with pkg.open("xl/workbook.xml") as stream:
            for _, elem in events(stream, kind="xlsx"):
                if elem.tag in _SHEET:
                    rid = next((elem.get(a) for a in _RID if elem.get(a)), None)
                    if rid in targets:
                        self.sheets[targets[rid]] = elem.get("name") or targets[rid]
                elif elem.tag in _DEFINED:
                    self.names.append(f"{elem.get('name', '')}\t{elem.text or ''}")
        strings = next((t for t in targets.values() if t.endswith("sharedStrings.xml")),
                       "xl/sharedStrings.xml")
        if pkg.has(strings):
            self.strings = self._shared_strings(strings)

    def _relationships(self, name: str) -> dict[str, str]:
        if not self.pkg.has(name):
            return {}
        out = {}
        with self.pkg.open(name) as stream:
            for _, elem in events(stream, kind="xlsx"):
                if elem.tag == _RELATIONSHIP and elem.get("Id") and elem.get("Target"):
                    target = elem.get("Target", "")
                    out[elem.get("Id", "")] = (target.lstrip("/") if target.startswith("/")
                                               else posixpath.normpath(posixpath.join("xl", target)))
        return out

    def _shared_strings(self, name: str) -> list[str]:
        out: list[str] = []
        with self.pkg.stream(name) as stream:
            for _, elem in events(stream, kind="xlsx"):
                if elem.tag in _SI:
                    out.append("".join(t.text or "" for t in elem.iter() if t.tag in _T))
                    elem.clear()
        return out

    def sheet_parts(self) -> Iterator[tuple[str, str]]:
        """(part, sheet name) for listed sheets, then for worksheet parts the workbook omits."""
        yield from self.sheets.items()
        for name in self.pkg.names():
            if name.startswith("xl/worksheets/") and name.endswith(".xml") and name not in self.sheets:
                yield name, posixpath.basename(name)[:-4]


def _sheet_units(open_part: Callable[[], IO[bytes]], strings: list[str],
                 writer: TableWriter) -> Iterator[TextUnit | SheetRun]:
    """Units of one worksheet; the first row with text names the columns.

    The fast reader (:mod:`sheetxml`) goes first. Once the header row is known, each run of rows
    it validated is handed on as a :class:`SheetRun`, made into units by whoever runs the
    detectors on them (here, or a helper process: :mod:`relayguard.detect.parallel`). When it
    declines, the parser reads the part from the start and the rows the fast reader already
    delivered are skipped (they were exactly the parser's own): the rows are the same whichever
    path read which, though the units are cut at other places.
    """
    table = _Table(writer)
    done = 0
    try:
        with open_part() as stream:
            for run in sheetxml.runs(stream):
                done += run.count("<row")
                if table.headers is None:
                    yield from table.units(sheetxml.run_rows(run, strings))
                    continue
                last = writer.flush()
                if last is not None:
                    yield last
                yield SheetRun(writer.where, writer.sep, run, strings, table.headers)
    except sheetxml.Declined:
        with open_part() as stream:
            yield from table.units(islice(_parsed_rows(stream, strings), done, None))
    last = writer.flush()
    if last is not None:
        yield last


@dataclass(frozen=True, slots=True)
class SheetRun:
    """Rows of a worksheet as the fast reader validated them, not yet read into units: reading
    them is half the work of a large sheet, and whoever runs the detectors on them does it."""

    where: str
    sep: str
    run: str  # validated row XML (sheetxml.runs)
    strings: list[str]  # the workbook's shared strings
    columns: dict[str, str]  # the sheet's header row: column letters -> header

    def units(self, budget: Budget) -> list[TextUnit]:
        writer = TableWriter(self.where, budget, sep=self.sep)
        writer.columns = self.columns
        return list(writer.rows((values, refs, None)
                                for values, refs in sheetxml.run_rows(self.run, self.strings)))


class _Table:
    """Rows into a :class:`TableWriter`, headed by the first row with text. Headers are a dict
    keyed by column letters."""

    def __init__(self, writer: TableWriter) -> None:
        self.writer = writer
        self.headers: dict[str, str] | None = None
        self.before: TextUnit | None = None  # rows above the header row, once it is found

    def add(self, values: list[str], refs: list[str]) -> TextUnit | None:
        if self.headers is None and any(v and not v[0].isdigit() for v in values):
            self.headers = {r.rstrip(_DIGITS): v for r, v in zip(refs, values, strict=True)}
            self.before = self.writer.set_columns(self.headers)
        return self.writer.add_row(values, refs)

    def units(self, rows: Iterator[tuple[list[str], list[str]]]) -> Iterator[TextUnit]:
        """The units of ``rows`` as they fill up (not the last, partial one)."""
        for values, refs in rows:
            unit = self.add(values, refs)
            if self.before is not None:
                yield self.before
                self.before = None
            if unit is not None:
                yield unit


def _parsed_rows(stream: IO[bytes], strings: list[str]) -> Iterator[tuple[list[str], list[str]]]:
    """(values, references) of every row element, read by the XML parser.

    Events come a parser chunk at a time and each row's values and references are collected in
    one pass over its cells: with millions of elements per sheet, per-event and per-cell Python
    work is most of an xlsx scan.
    """
    for batch in event_batches(stream, kind="xlsx"):
        for _, row in batch:
            if row.tag in _ROW:
                cells = _row_cells(row, strings)
                row.clear()
                yield cells


def _row_cells(row: Element, strings: list[str]) -> tuple[list[str], list[str]]:
    """The non-empty values of ``row`` and their cell references, in one pass."""
    values: list[str] = []
    refs: list[str] = []
    for i, cell in enumerate(row):
        kind = cell.get("t")
        if kind == "inlineStr":
            value = "".join([t.text or "" for t in cell.iter() if t.tag in _T])
        else:
            value = cell_value(kind, _first_text(cell, _V), strings)
        if value:
            values.append(value)
            refs.append(cell.get("r") or f"{_column(i)}{row.get('r', '')}")
    return values, refs


def _first_text(cell: Element, tags: frozenset[str]) -> str | None:
    """The text of ``cell``'s first child tagged one of ``tags`` (its ``<v>``)."""
    if len(cell) == 1:  # the usual cell, a lone <v>: no generator to set up
        child = cell[0]
        return child.text if child.tag in tags else None
    return next((child.text for child in cell if child.tag in tags), None)


def _column(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _pivot_values(pkg: SafeZip, name: str, where: str, budget: Budget) -> Iterator[TextUnit]:
    # Pivot caches keep a copy of the source data as attributes: <s v="..."/>, <n v="..."/>.
    values: list[str] = []
    with pkg.stream(name) as stream:
        for _, elem in events(stream, kind="xlsx"):
            v = elem.get("v")
            if v:
                values.append(number_text(v))
            elem.clear()
            if len(values) >= 10_000:
                yield TextUnit(where, "\n".join(values))
                values = []
    if values:
        yield TextUnit(where, "\n".join(values))
