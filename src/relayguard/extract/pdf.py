"""PDF: the text layer of every page, plus form field values (pypdf)."""

from __future__ import annotations

import io
from collections.abc import Iterator

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError, PdfReadError

from relayguard.extract.base import Budget, Source, TextUnit, UnscannableError


def extract_pdf(src: Source, budget: Budget) -> Iterator[TextUnit]:
    try:
        reader = PdfReader(io.BytesIO(src.data), strict=False)
    except PdfReadError as exc:
        raise UnscannableError("corrupt pdf") from exc
    if reader.is_encrypted and not _opens_without_password(reader):
        raise UnscannableError("encrypted pdf")
    for page in reader.pages:
        budget.check_time()
        text = page.extract_text() or ""
        if text.strip():
            yield TextUnit(src.where, text)
    fields = _form_values(reader)
    if fields:
        yield TextUnit(f"{src.where}/form", fields)


def _opens_without_password(reader: PdfReader) -> bool:
    # Many PDFs are "encrypted" with an empty user password only to restrict printing.
    try:
        return bool(reader.decrypt(""))
    except (FileNotDecryptedError, PdfReadError, NotImplementedError, ValueError):
        return False


def _form_values(reader: PdfReader) -> str:
    lines = []
    for name, field in (reader.get_fields() or {}).items():
        value = field.get("/V")
        if value is not None and str(value).strip():
            lines.append(f"{name}: {value}")
    return "\n".join(lines)
