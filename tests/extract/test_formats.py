"""Each format and each hiding place: an identifier placed there is found, and located."""

from __future__ import annotations

import pytest

from relayguard.extract.csvfile import sniff_delimiter
from relayguard.extract.sniff import Format, sniff
from relayguard.extract.text import decode, html_to_text
from tests.extract import builders as b
from tests.extract.builders import NHS, confident, reasons, scan, scan_attachment

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _wheres(findings: list) -> set[str]:  # type: ignore[type-arg]
    return {f.where for f in confident(findings)}


@pytest.mark.parametrize(("place", "where"), [
    ("hidden", "attachment:b.xlsx/Data!B2"),
    ("veryHidden", "attachment:b.xlsx/Data!B2"),
    ("comment", "attachment:b.xlsx/comment1"),
    ("defined_name", "attachment:b.xlsx/names"),
    ("chart", "attachment:b.xlsx/chart1"),
    ("numeric", "attachment:b.xlsx/Summary!C2"),
])
def test_xlsx_hiding_places(place: str, where: str) -> None:
    """An NHS number in a hidden or very hidden sheet, comment, defined name or chart cache is found."""
    assert _wheres(scan_attachment("b.xlsx", XLSX, b.xlsx_with(place))) == {where}


def test_xlsx_column_header_decides_confidence() -> None:
    """A lone valid number is confident under an "NHS No" header and weak under "Order"."""
    for header, expected in (("NHS No", True), ("Order", False)):
        findings = scan_attachment("b.xlsx", XLSX, b.xlsx_column(header))
        assert [f.confident for f in findings if f.kind == "nhs_number"] == [expected]


def test_xlsx_found_even_when_named_otherwise() -> None:
    """A workbook sent as report.dat with a generic type is still read as xlsx (content decides)."""
    assert _wheres(scan_attachment("report.dat", "application/octet-stream", b.xlsx_with("hidden")))


@pytest.mark.parametrize(("place", "where"), [
    ("body", "document"), ("table", "document"), ("header", "header1"), ("footer", "footer1"),
    ("comment", "comments"), ("footnote", "footnotes"),
])
def test_docx_hiding_places(place: str, where: str) -> None:
    """An NHS number in a docx body, table, header, footer, comment or footnote is found there."""
    data = b.docx_bytes(place, f"NHS No: {NHS}")
    assert _wheres(scan_attachment("l.docx", DOCX, data)) == {f"attachment:l.docx/{where}"}


def test_docx_table_row_gives_same_row_support() -> None:
    """A DOB in the same docx table row supports a number without its own cue word."""
    data = b.docx_bytes("table", f"{NHS} born 02/03/1951")
    assert confident(scan_attachment("l.docx", DOCX, data))


def test_pptx_slides_and_notes() -> None:
    """Identifiers in pptx speaker notes (and slides) are found."""
    data = b.pptx_bytes("Quarterly update", f"Patient NHS {NHS}")
    assert _wheres(scan_attachment("deck.pptx", "application/octet-stream", data)) == {
        "attachment:deck.pptx/notesSlide1"}


def test_odt_text_with_spans_and_header_in_styles() -> None:
    """ODT paragraphs with mixed content and headers kept in styles.xml are read."""
    body = f"<text:p>Patient <text:span>NHS</text:span> {NHS}</text:p>"
    styles = f"<text:p>NHS {b.valid_numbers('777', 1)[0]}</text:p>"
    findings = scan_attachment("l.odt", b.ODT, b.odf_bytes(body, styles_xml=styles))
    assert _wheres(findings) == {"attachment:l.odt/content", "attachment:l.odt/styles"}


def test_ods_cell_raw_value_behind_formatting() -> None:
    """An ods cell formatted as 4.37E+09 is read through its raw office:value."""
    rows = (f'<table:table><table:table-row><table:table-cell><text:p>NHS number</text:p></table:table-cell>'
            f'<table:table-cell office:value="{NHS}"><text:p>4.37E+09</text:p></table:table-cell>'
            "</table:table-row></table:table>")
    assert confident(scan_attachment("s.ods", "application/octet-stream", b.odf_bytes(rows)))


def test_pdf_text_layer() -> None:
    """The text layer of a PDF is scanned."""
    data = b.pdf_bytes(["Care plan", f"NHS number {NHS}"])
    assert _wheres(scan_attachment("c.pdf", "application/pdf", data)) == {"attachment:c.pdf"}


def test_csv_header_and_location() -> None:
    """A csv column headed NHS number makes bare numbers confident and names the row."""
    data = f"name,nhs_number\nGrace,{NHS}\n".encode()
    assert _wheres(scan_attachment("x.csv", "text/csv", data)) == {"attachment:x.csv:row 2"}


def test_tsv_without_extension_is_sniffed() -> None:
    """A tab-separated file sent as octet-stream is recognised by content and its header used."""
    data = f"Name\tCHI\nGrace\t{b.with_check('020351123') or b.with_check('020351124')}\n".encode()
    assert confident(scan_attachment("export", "application/octet-stream", data), "chi_number")


def test_nested_zip_with_csv() -> None:
    """A csv inside a zip inside a zip is found, with the full path as its place."""
    inner = b.zip_bytes({"extract.csv": f"first,nhs no\nGrace,{NHS}\n".encode()})
    outer = b.zip_bytes({"inner.zip": inner})
    assert _wheres(scan_attachment("o.zip", "application/zip", outer)) == {
        "attachment:o.zip/inner.zip/extract.csv:row 2"}


@pytest.mark.parametrize("octet", [False, True])
def test_forwarded_message_inside_a_message(octet: bool) -> None:
    """A forwarded message (message/rfc822 or an .eml attachment) is walked, body and attachments."""
    inner = b.message(f"NHS no {NHS}", attachments=(("l.docx", DOCX, b.docx_bytes("footer", f"NHS {NHS}")),))
    assert _wheres(scan(b.forwarded(inner, as_octet_stream=octet))) == {
        "attachment:fwd.eml/body", "attachment:fwd.eml/l.docx/footer1"}


def test_html_entities_are_decoded_and_script_dropped() -> None:
    """HTML entities are decoded before detection, and script content is ignored."""
    other = b.valid_numbers("444", 1)[0]
    html = f"<p>NHS&nbsp;number&#58;&#32;436&#32;614&#32;1345</p><script>var x='NHS {other}'</script>"
    text = html_to_text(html)
    assert "NHS\xa0number: 436 614 1345" in text
    assert other not in text
    assert [f.count for f in confident(scan(b.message("see html", html=html)))] == [1]


def test_images_are_skipped_not_unscannable() -> None:
    """An image attachment is neither a finding nor unscannable."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    assert scan_attachment("photo.png", "image/png", png) == []


def test_decode_never_raises() -> None:
    """Text in an unknown charset or invalid UTF-8 decodes with replacement or cp1252."""
    assert decode(b"caf\xe9", "no-such-charset") == "caf\xe9"
    assert decode(b"\xff\xfeh\x00i\x00") == "hi"


@pytest.mark.parametrize(("data", "fmt"), [
    (b"%PDF-1.7\n...", Format.PDF),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), Format.OLE),
    (b"From: a@b\nSubject: hi\nTo: c@d\n\nbody", Format.MESSAGE),
    (b"<!DOCTYPE html><html><body>x</body></html>", Format.HTML),
    (b"a,b,c\n1,2,3\n4,5,6\n", Format.CSV),
    (b"Dear colleague, thank you.\n", Format.TEXT),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", Format.BINARY),
])
def test_sniff_by_content(data: bytes, fmt: Format) -> None:
    """Formats are recognised from content bytes regardless of the claimed name."""
    assert sniff(data, name="unnamed.bin") == fmt


def test_sniff_delimiter_prefers_consistent_counts() -> None:
    """The delimiter that splits every line the same number of times wins."""
    assert sniff_delimiter("a;b;c\n1;2,5;3\n") == ";"
    assert sniff_delimiter("a\tb\n1\t2\n") == "\t"


def test_claimed_document_that_is_not_one_is_corrupt() -> None:
    """Garbage sent as a .docx is unscannable 'corrupt docx', not skipped."""
    assert reasons(scan_attachment("l.docx", DOCX, b"\x00\x01\x02 not a document")) == {"corrupt docx"}
