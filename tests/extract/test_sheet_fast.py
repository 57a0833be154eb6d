"""The fast worksheet reader gives exactly the parser's rows, or declines and the parser reads."""

from __future__ import annotations

import io
import zipfile
from typing import IO

import openpyxl
import pytest

from relayguard.config import ScanSettings
from relayguard.extract import Budget, UnscannableError, ooxml, sheetxml
from relayguard.extract.table import TableWriter
from tests.extract.builders import NHS, xlsx_bytes

SML = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
X14AC = "http://schemas.microsoft.com/office/spreadsheetml/2009/9/ac"
HEAD = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<worksheet xmlns="{SML}" xmlns:x14ac="{X14AC}">')
ROWS = ('<row r="1" spans="1:3" x14ac:dyDescent="0.25">'
        '<c r="A1" t="inlineStr"><is><t>NHS number</t></is></c><c r="B1" t="s"><v>0</v></c></row>'
        f'<row r="2"><c r="A2"><v>{NHS}</v></c><c r="B2" s="1" t="s"><v>1</v></c><c r="C2" s="2"/></row>'
        '<row r="3"/><row r="4"><c r="A4"><f>A2+1</f><v>4.366141346E9</v></c>'
        '<c r="B4" t="str"><f t="shared" ref="B4:B5" si="0"/><v>text</v></c></row>')
STRINGS = ["DOB", "02/03/1951"]
Result = list[tuple[str, list[int], list[str], list[str | None]]]


TAIL = '<pageMargins left="0.7"/></worksheet>'


def sheet(rows: str = ROWS, *, head: str = HEAD, tail: str = TAIL) -> bytes:
    return f"{head}<sheetData>{rows}</sheetData>{tail}".encode()


class _Breaking(io.BytesIO):
    """A member that turns out corrupt (bad CRC, over its declared size) after ``at`` bytes."""

    def __init__(self, data: bytes, at: int) -> None:
        super().__init__(data)
        self.at = at

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if self.tell() > self.at:
            raise UnscannableError("corrupt xlsx")
        return data


def units(xml: bytes, *, breaks_at: int | None = None) -> Result:
    """What ooxml makes of one worksheet part: the text and cells of all its units as one (the
    paths cut units at different places), then the reason it failed if it did."""
    budget = Budget.start(ScanSettings())
    writer = TableWriter("w", budget)
    text, starts, refs, headers = "", [], [], []

    def open_part() -> IO[bytes]:
        return io.BytesIO(xml) if breaks_at is None else _Breaking(xml, breaks_at)

    def rows() -> Result:
        return [(text, starts, refs, headers)] if refs else []

    try:
        for work in ooxml._sheet_units(open_part, STRINGS, writer):
            for u in work.units(budget):
                assert u.cells
                starts = [*starts, *(len(text) + s for s in u.cells.starts)]
                text += u.text
                refs = [*refs, *u.cells.refs]
                headers = [*headers, *u.cells.headers]
    except UnscannableError as exc:
        return [*rows(), (exc.reason, [], [], [])]
    return rows()


def parser_units(xml: bytes, monkeypatch: pytest.MonkeyPatch, *, breaks_at: int | None = None) -> Result:
    def decline(stream: IO[bytes], strings: list[str]) -> sheetxml.Rows:
        raise sheetxml.Declined
        yield [], []

    with monkeypatch.context() as m:
        m.setattr(sheetxml, "rows", decline)
        return units(xml, breaks_at=breaks_at)


def fast_accepts(xml: bytes) -> bool:
    try:
        for _ in sheetxml.rows(io.BytesIO(xml), STRINGS):
            pass
    except sheetxml.Declined:
        return False
    return True


def test_plain_sheet_is_read_fast_and_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    xml = sheet()
    assert fast_accepts(xml)
    got = units(xml)
    assert got == parser_units(xml, monkeypatch)
    assert isinstance(got, list)
    assert got[0][0] == f"NHS number\tDOB\n{NHS}\t02/03/1951\n4366141346\ttext\n"


def _worksheets(data: bytes) -> list[bytes]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    return [zf.read(n) for n in zf.namelist() if n.startswith("xl/worksheets/")]


def test_openpyxl_workbooks_are_read_fast_and_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Name", "NHS No", "DOB", "Score", "When"])
    for i in range(300):
        ws.append([f"Patient {i}", int(NHS) + i, "02/03/1951", i / 7, "=B2+1" if i % 5 == 0 else None])
    ws["G7"] = 1e20
    ws["H8"] = True
    [part] = _worksheets(xlsx_bytes(wb))
    assert fast_accepts(part)
    assert units(part) == parser_units(part, monkeypatch)


UNUSUAL = {
    "namespace prefix": sheet(ROWS.replace("<row r=\"3\"/>", '<x:row xmlns:x="' + SML + '" r="3"/>')),
    "prefixed rows throughout": sheet(ROWS.replace("<row", "<x:row").replace("</row>", "</x:row>"),
                                      head=HEAD.replace("<worksheet", f'<worksheet xmlns:x="{SML}"')),
    "cdata": sheet(ROWS.replace("<t>NHS number</t>", "<t><![CDATA[NHS number]]></t>")),
    "character reference": sheet(ROWS.replace(f"<v>{NHS}</v>", f"<v>&#52;{NHS[1:]}</v>")),
    "entity reference": sheet(ROWS.replace("<t>NHS number</t>", "<t>NHS &amp; number</t>")),
    "undefined entity": sheet(ROWS.replace("<t>NHS number</t>", "<t>&lol;</t>")),
    "comment": sheet(ROWS.replace("<row r=\"3\"/>", "<!-- <row r=\"9\"/> --><row r=\"3\"/>")),
    "doctype": sheet(head=HEAD.replace("<worksheet", "<!DOCTYPE worksheet [<!ENTITY a \"b\">]><worksheet")),
    "unexpected element": sheet(ROWS.replace("<c r=\"C2\" s=\"2\"/>", "<c r=\"C2\"><extLst/></c>")),
    "rich inline string": sheet(ROWS.replace("<is><t>NHS number</t></is>",
                                             "<is><r><t>NHS</t></r><t> number</t></is>")),
    "other default namespace": sheet(head=HEAD.replace(SML, "urn:other")),
    "default namespace redeclared": sheet(ROWS.replace('<row r="3"/>', '<row r="3" xmlns="urn:other"/>')),
    "row in another namespace": sheet(tail=f'<e xmlns="u:x"><row><c r="Z1"><v>{NHS}</v></c></row></e>{TAIL}'),
    "row after sheetData": sheet(tail=f'<extLst><row><c r="Z1"><v>{NHS}</v></c></row></extLst>{TAIL}'),
    "byte order mark": b"\xef\xbb\xbf" + sheet(),
    "latin-1": sheet(head=HEAD.replace("UTF-8", "ISO-8859-1")).replace(b"NHS number", b"NHS n\xfamber"),
    "carriage return in text": sheet(ROWS.replace("<t>NHS number</t>", "<t>NHS\rnumber</t>")),
    "tab in attribute": sheet(ROWS.replace('t="s"><v>0', 't="s\t"><v>0')),
    "single quotes": sheet(ROWS.replace('r="A2"', "r='A2'")),
    "attributes reordered": sheet(ROWS.replace('s="1" t="s"', 't="s" s="1"')),
    "cell without reference": sheet(ROWS.replace('<c r="A2">', "<c>")),
    "empty type": sheet(ROWS.replace('<c r="A2">', '<c r="A2" t="">')),
    "undeclared x14ac": sheet(head=HEAD.replace(f' xmlns:x14ac="{X14AC}"', "")),
    "markup character in text": sheet(ROWS.replace("<t>NHS number</t>", "<t>NHS ]]> number</t>")),
    "control character": sheet(ROWS.replace("<t>NHS number</t>", "<t>NHS \x01 number</t>")),
    "invalid utf-8": sheet().replace(b"NHS number", b"NHS \xff number"),
    "mismatched tags": sheet(ROWS.replace("</row><row r=\"2\">", "</rov><row r=\"2\">")),
    "truncated": sheet()[:-40],
    "broken tail": sheet(tail="<pageMargins></worksheet>"),
    "text after the root": sheet(tail="</worksheet><x/>"),
    # Rows inside a processing instruction are text to the parser: reading them as rows and then
    # skipping as many real rows on falling back would hide the real ones.
    "processing instruction before the rows": (
        f"{HEAD}<?pi <sheetData>{ROWS}</sheetData> ?><sheetData>"
        + ROWS.replace("NHS number", "Real NHS number") + f"</sheetData>{TAIL}").encode(),
    "sheetData not a child of the root": sheet(head=HEAD + "<x>", tail="</x>" + TAIL),
    "prefix only inside a value": sheet(head=HEAD.replace(f' xmlns:x14ac="{X14AC}"', ' a="xmlns:x14ac="')),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_constructs_fall_back_to_the_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    xml = UNUSUAL[name]
    assert not fast_accepts(xml)
    assert units(xml) == parser_units(xml, monkeypatch)


def test_unusual_row_late_in_a_big_sheet_gives_the_parser_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows read fast before the decline are skipped by the parser, not read twice or lost."""
    plain = "".join(f'<row r="{r}"><c r="A{r}"><v>{int(NHS) + r}</v></c>'
                    f'<c r="B{r}" t="inlineStr"><is><t>LE1 5WW</t></is></c></row>' for r in range(5, 40_000))
    odd = '<row r="40000"><c r="A40000" t="inlineStr"><is><t>A &amp; E</t></is></c></row>'
    xml = sheet(ROWS + plain + odd + plain.replace('r="', 'r="9'))
    got = units(xml)
    assert isinstance(got, list) and len(got[0][2]) > 100_000  # every cell, once
    assert got == parser_units(xml, monkeypatch)


def test_a_member_failing_midway_gives_the_parser_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read error is the parser's to place: the rows before it are the ones it would read."""
    plain = "".join(f'<row r="{r}"><c r="A{r}"><v>{int(NHS) + r}</v></c><c r="B{r}" t="inlineStr">'
                    '<is><t>LE1 5WW seen in clinic</t></is></c></row>' for r in range(5, 40_000))
    xml = sheet(ROWS + plain)
    for at in range(len(xml) // 4, len(xml), len(xml) // 13):
        got = units(xml, breaks_at=at)
        assert got[-1][0] == "corrupt xlsx"
        assert got == parser_units(xml, monkeypatch, breaks_at=at), at


def test_doctype_is_refused_whichever_reader_sees_it_first() -> None:
    assert units(UNUSUAL["doctype"]) == [("unsafe xml in xlsx", [], [], [])]
