"""Decide a part's format from its content (magic bytes), with the sender's claim only as a hint.

The claim (filename extension, Content-Type) is used for two things only: to tell csv from plain
text when the content fits both, and to name a part that claims to be a document but is not one
("corrupt xlsx"), because a document that cannot be read must not pass silently.
"""

from __future__ import annotations

import io
import re
import zipfile
from enum import StrEnum


class Format(StrEnum):
    TEXT = "text"
    HTML = "html"
    CSV = "csv"
    XLSX = "xlsx"
    DOCX = "docx"
    PPTX = "pptx"
    ODF = "odf"
    PDF = "pdf"
    ZIP = "zip"
    MESSAGE = "message"
    OLE = "ole"  # legacy Office or an encrypted OOXML package
    BINARY = "binary"  # images, executables, anything we do not read


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Leading bytes of formats that are binary but not documents; they are skipped, not unscannable.
_HTML_RE = re.compile(rb"<(?:!doctype\s+html|html|head|body|div|p|table|br|span)[\s>/]", re.I)
# A message starts with header fields; these names make a stray "Key: value" text unlikely.
_MESSAGE_HEADER_RE = re.compile(
    rb"^(?:from|to|subject|date|received|return-path|message-id|mime-version|delivered-to)[ \t]*:",
    re.I | re.M,
)
_FIELD_LINE_RE = re.compile(rb"[!-9;-~]+[ \t]*:")
_SNIFF_BYTES = 8192

# Extensions and Content-Type fragments by which a sender claims a part is a document.
_CLAIMS: dict[str, tuple[str, ...]] = {
    "xlsx": (".xlsx", ".xlsm", "spreadsheetml"),
    "docx": (".docx", ".docm", "wordprocessingml"),
    "pptx": (".pptx", ".pptm", "presentationml"),
    "odf": (".odt", ".ods", ".odp", "opendocument"),
    "pdf": (".pdf", "/pdf"),
    "zip": (".zip", "/zip", "x-zip"),
    "xls": (".xls", ".doc", ".ppt", "ms-excel", "msword", "ms-powerpoint"),
}


def claimed_type(name: str, ctype: str) -> str | None:
    """The document type the sender claims by filename or Content-Type, if any."""
    hay = f"{name.lower()} {ctype.lower()}"
    for kind, marks in _CLAIMS.items():
        if any(mark in hay for mark in marks):
            return kind
    return None


def sniff(data: bytes, *, name: str = "", ctype: str = "") -> Format:
    """The format of ``data`` decided by its content."""
    head = data[:_SNIFF_BYTES]
    if head.startswith(_ZIP_MAGICS):
        return _zip_flavour(data)
    if head.startswith(_OLE_MAGIC):
        return Format.OLE
    if b"%PDF-" in head[:1024]:
        return Format.PDF
    return _text_flavour(head, name=name, ctype=ctype) if _looks_like_text(head) else Format.BINARY


def _text_flavour(head: bytes, *, name: str, ctype: str) -> Format:
    if _looks_like_message(head):
        return Format.MESSAGE
    if _HTML_RE.search(head[:2048]):
        return Format.HTML
    if _looks_like_csv(head, name=name, ctype=ctype):
        return Format.CSV
    return Format.TEXT


_CONTROLS = bytes((*range(1, 9), 14, 15, 16, 17, 18, 19, 20, 26, 27))


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    if b"\x00" in head and not _is_utf16(head):
        return False
    # Control bytes other than tab/newline/CR/FF are rare in text and common in binaries.
    controls = len(head) - len(head.translate(None, _CONTROLS))  # one pass, not one per byte value
    return controls * 50 < len(head)


def _is_utf16(head: bytes) -> bool:
    return head.startswith((b"\xff\xfe", b"\xfe\xff"))


def _looks_like_message(head: bytes) -> bool:
    lines = head.split(b"\n", 20)[:20]
    fields = 0
    for line in lines:
        stripped = line.rstrip(b"\r")
        if not stripped:
            break  # end of the header block
        if stripped[:1] in (b" ", b"\t"):
            continue  # folded continuation of the previous field
        if not _FIELD_LINE_RE.match(stripped):
            return False
        fields += 1
    return fields >= 2 and len(_MESSAGE_HEADER_RE.findall(head[:4096])) >= 2


def _looks_like_csv(head: bytes, *, name: str, ctype: str) -> bool:
    hay = f"{name.lower()} {ctype.lower()}"
    if any(mark in hay for mark in (".csv", ".tsv", "text/csv", "tab-separated", "comma-separated")):
        return True
    lines = [ln for ln in head.split(b"\n")[:20] if ln.strip()]
    if len(lines) < 2:
        return False
    lines = lines[:-1] if len(lines) > 2 else lines  # the last line may be cut by the sniff window
    for delim in (b"\t", b",", b";", b"|"):
        counts = {ln.count(delim) for ln in lines}
        if len(counts) == 1 and counts.pop() >= 1:
            return True
    return False


def _zip_flavour(data: bytes) -> Format:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            mimetype = _odf_mimetype(zf, names)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return Format.ZIP  # the zip extractor reports it as corrupt
    if "xl/workbook.xml" in names:
        return Format.XLSX
    if "word/document.xml" in names:
        return Format.DOCX
    if "ppt/presentation.xml" in names:
        return Format.PPTX
    if mimetype.startswith("application/vnd.oasis.opendocument") or "content.xml" in names:
        return Format.ODF
    return Format.ZIP


def _odf_mimetype(zf: zipfile.ZipFile, names: set[str]) -> str:
    if "mimetype" not in names:
        return ""
    info = zf.getinfo("mimetype")
    if info.file_size > 200 or info.flag_bits & 0x1:
        return ""
    return zf.read(info).decode("ascii", "replace")
