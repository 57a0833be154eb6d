"""Pick an extractor by content and turn any failure to read into an ``unscannable`` problem."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from relayguard.extract import archive, csvfile, message, odf, ooxml, pdf, text
from relayguard.extract.base import (
    Budget,
    BudgetExceededError,
    Item,
    NeedsWorkerError,
    Problem,
    Source,
    UnscannableError,
)
from relayguard.extract.sniff import Format, claimed_type, sniff

Handler = Callable[[Source, Budget], Iterator[Item]]


def _message(src: Source, budget: Budget) -> Iterator[Item]:
    if src.depth + 1 > budget.limits.max_depth:
        raise UnscannableError("nesting too deep")
    msg = message.parse_message(src.data)
    yield from message.walk_message(msg, where=src.where, depth=src.depth + 1, budget=budget,
                                    dispatch=extract)


def _ole(src: Source, budget: Budget) -> Iterator[Item]:
    # An encrypted OOXML file is an OLE2 container holding an "EncryptedPackage" stream; the
    # directory stores names as UTF-16LE. Legacy .doc/.xls are not read: unscannable, not a pass.
    if "EncryptedPackage".encode("utf-16-le") in src.data:
        raise UnscannableError("encrypted office document")
    raise UnscannableError("unsupported legacy office document")
    yield  # pragma: no cover - makes this a generator like the other handlers


def _binary(src: Source, budget: Budget) -> Iterator[Item]:
    claim = claimed_type(src.name, src.ctype)
    if claim is not None:
        raise UnscannableError(f"corrupt {claim}")
    yield from ()  # images and other binaries hold no text we read


_HANDLERS: dict[Format, Handler] = {
    Format.TEXT: lambda s, b: text.extract_text(s, b, s.charset),
    Format.HTML: lambda s, b: text.extract_html(s, b, s.charset),
    Format.CSV: lambda s, b: csvfile.extract_csv(s, b, s.charset),
    Format.XLSX: ooxml.extract_xlsx,
    Format.DOCX: ooxml.extract_docx,
    Format.PPTX: ooxml.extract_pptx,
    Format.ODF: odf.extract_odf,
    Format.PDF: pdf.extract_pdf,
    Format.ZIP: lambda s, b: archive.extract_zip(s, b, extract),
    Format.MESSAGE: _message,
    Format.OLE: _ole,
    Format.BINARY: _binary,
}


_PACKAGES = frozenset({"xlsx", "docx", "pptx", "odf"})

# Not read by an inline scan (see Budget.inline): what decompresses can cost 100 times its size.
# (HTML has its own bound, in text.extract_html.)
_INFLATING = frozenset({Format.XLSX, Format.DOCX, Format.PPTX, Format.ODF, Format.PDF, Format.ZIP})


def _reason(reason: str, src: Source) -> str:
    # A broken zip that was sent as a workbook is better reported as what the sender meant.
    claim = claimed_type(src.name, src.ctype)
    return f"corrupt {claim}" if reason == "corrupt zip" and claim in _PACKAGES else reason


def extract(src: Source, budget: Budget) -> Iterator[Item]:
    """Items for one part or archive member, whatever its format; never raises but for the budget."""
    budget.check_time()
    fmt = sniff(src.data, name=src.name, ctype=src.ctype)
    if budget.inline and fmt in _INFLATING:
        raise NeedsWorkerError(f"{fmt.value} is scanned in a worker")
    try:
        yield from _HANDLERS[fmt](src, budget)
    except BudgetExceededError:
        raise
    except UnscannableError as exc:
        yield Problem(src.where, _reason(exc.reason, src))
    except Exception:  # noqa: BLE001 - parsers fed hostile input raise anything; that is unscannable, never a pass
        yield Problem(src.where, f"corrupt {fmt.value}")
