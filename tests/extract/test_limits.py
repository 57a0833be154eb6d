"""Hostile and unreadable attachments end as unscannable, quickly and within bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import pytest

from relayguard.decision import Finding
from tests.extract import builders as b
from tests.extract.builders import NHS, reasons, scan_attachment

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MB = 1 << 20


def _measured(run: Callable[[], list[Finding]]) -> tuple[list[Finding], float, float]:
    """The findings, the seconds taken and the peak traced allocation in MB."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        findings = run()
        return findings, time.monotonic() - started, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def test_nested_zip_bomb_is_unscannable_quickly_and_small() -> None:
    """A 42.zip-style nested archive ends unscannable within the budget, using under 200 MB."""
    bomb = b.nested_bomb()
    findings, seconds, peak = _measured(lambda: scan_attachment("42.zip", "application/zip", bomb))
    assert reasons(findings) & {"zip over ratio limit", "zip member over ratio limit", "too many zip members"}
    assert seconds < 20
    assert peak < 200


def test_single_member_bomb_is_unscannable() -> None:
    """One highly compressed member (300 MB of zeros) is refused by its ratio, before inflating."""
    bomb = b.zip_bytes({"zeros.csv": bytes(300 * MB)})
    findings, _, peak = _measured(lambda: scan_attachment("z.zip", "application/zip", bomb))
    assert reasons(findings) == {"zip member over ratio limit"}
    assert peak < 200


def test_member_that_lies_about_its_size_is_stopped_while_reading() -> None:
    """A member whose output exceeds the per-part limit is stopped by the byte count as it is read."""
    data = b.zip_bytes({"a.csv": b"x,y\n" * 200_000})  # 800 kB, well under the ratio floor
    findings = scan_attachment("z.zip", "application/zip", data, max_part_bytes=100_000)
    assert "zip member over size limit" in reasons(findings)


def test_billion_laughs_xlsx_is_unscannable_quickly() -> None:
    """An xlsx whose shared strings hold an entity bomb is refused at its DTD, fast and small."""
    bomb = b.add_members(b.xlsx_with("none"), {"xl/sharedStrings.xml": b.BILLION_LAUGHS.encode()})
    findings, seconds, peak = _measured(lambda: scan_attachment("b.xlsx", XLSX, bomb))
    assert reasons(findings) == {"unsafe xml in xlsx"}
    assert seconds < 5
    assert peak < 50


def test_encrypted_zip_member() -> None:
    """A zip member flagged as encrypted is unscannable 'encrypted zip'."""
    data = b.mark_encrypted(b.zip_bytes({"records.csv": b"a,b\n"}))
    assert reasons(scan_attachment("r.zip", "application/zip", data)) == {"encrypted zip"}


def test_encrypted_office_document() -> None:
    """An OLE2 container holding an EncryptedPackage stream is 'encrypted office document'."""
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512) + "EncryptedPackage".encode("utf-16-le")
    assert reasons(scan_attachment("p.xlsx", XLSX, data)) == {"encrypted office document"}


def test_encrypted_pdf() -> None:
    """A PDF that needs a password is 'encrypted pdf', and its text is not read."""
    data = b.pdf_bytes([f"NHS {NHS}"], encrypt="secret")
    findings = scan_attachment("c.pdf", "application/pdf", data)
    assert reasons(findings) == {"encrypted pdf"}
    assert [f for f in findings if f.kind == "nhs_number"] == []


def test_encrypted_odf() -> None:
    """An ODF package whose manifest declares encryption is 'encrypted odf document'."""
    data = b.odf_bytes("<text:p>x</text:p>", encrypted=True)
    assert reasons(scan_attachment("l.odt", b.ODT, data)) == {"encrypted odf document"}


@pytest.mark.parametrize(("name", "ctype", "data", "reason"), [
    ("c.pdf", "application/pdf", b"%PDF-1.4 garbage", "corrupt pdf"),
    ("b.xlsx", XLSX, b"PK\x03\x04 truncated", "corrupt xlsx"),
    ("l.docx", "application/octet-stream", b"PK\x03\x04 truncated", "corrupt docx"),
    ("x.zip", "application/zip", b"PK\x03\x04 truncated", "corrupt zip"),
])
def test_corrupt_documents(name: str, ctype: str, data: bytes, reason: str) -> None:
    """Documents that cannot be parsed are unscannable 'corrupt <type>'."""
    assert reasons(scan_attachment(name, ctype, data)) == {reason}


def test_broken_xml_inside_a_valid_package() -> None:
    """A workbook whose sheet XML is broken is 'corrupt xlsx' rather than silently passed."""
    data = b.add_members(b.xlsx_with("none"), {"xl/worksheets/sheet1.xml": b"<worksheet><sheetData><row>"})
    assert reasons(scan_attachment("b.xlsx", XLSX, data)) == {"corrupt xlsx"}


def test_archive_depth_limit() -> None:
    """Zips nested deeper than max_depth are 'nesting too deep'."""
    data = b.zip_bytes({"a.csv": b"x"})
    for i in range(5):
        data = b.zip_bytes({f"level{i}.zip": data})
    assert "nesting too deep" in reasons(scan_attachment("d.zip", "application/zip", data, max_depth=3))


def test_member_count_limit() -> None:
    """An archive with more members than max_members is unscannable."""
    data = b.zip_bytes({f"f{i}.txt": b"x" for i in range(20)})
    findings = scan_attachment("m.zip", "application/zip", data, max_members=10)
    assert reasons(findings) == {"too many zip members"}


def test_partial_results_survive_a_bad_member() -> None:
    """One encrypted member does not hide an identifier in a readable sibling."""
    good = b.zip_bytes({"ok.csv": f"nhs number\n{NHS}\n".encode()})
    bad = b.mark_encrypted(b.zip_bytes({"secret.csv": b"x"}))
    findings = scan_attachment("z.zip", "application/zip", b.zip_bytes({"good.zip": good, "bad.zip": bad}))
    assert "encrypted zip" in reasons(findings)
    assert any(f.kind == "nhs_number" and f.confident for f in findings)
