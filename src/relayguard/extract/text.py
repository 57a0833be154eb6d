"""Plain text and HTML: decode in any charset without failing, and split into bounded units."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from html.parser import HTMLParser

from relayguard.extract.base import Budget, NeedsWorkerError, Source, TextUnit

CHUNK_CHARS = 1 << 20  # detectors run per unit; bounded units let the deadline be checked often
_SKIPPED_TAGS = frozenset({"script", "style", "template", "noscript", "head"})
_BLOCK_TAGS = frozenset({
    "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "section",
    "article", "blockquote", "pre", "hr", "dt", "dd", "ul", "ol", "title",
})
_CELL_TAGS = frozenset({"td", "th"})


def decode(data: bytes, charset: str | None = None) -> str:
    """``data`` as text: the declared charset if Python knows it, else UTF-8; never raises."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", "replace")
    codec = _codec(charset)
    if codec is None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8 and nothing declared: cp1252 is what Windows mail clients send.
            return data.decode("cp1252", "replace")
    return data.decode(codec, "replace")


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        return codecs.lookup(charset.strip().strip('"').lower()).name
    except (LookupError, ValueError):
        return None


def chunks(text: str, limit: int = CHUNK_CHARS) -> Iterator[str]:
    """``text`` in pieces of about ``limit`` characters, cut at line ends so lines stay whole."""
    start, n = 0, len(text)
    while n - start > limit:
        cut = text.rfind("\n", start + limit // 2, start + limit)
        if cut < 0:
            cut = text.rfind(" ", start + limit // 2, start + limit)
        end = cut + 1 if cut >= 0 else start + limit
        yield text[start:end]
        start = end
    if start < n:
        yield text[start:]


def text_units(text: str, where: str, budget: Budget) -> Iterator[TextUnit]:
    """Bounded :class:`TextUnit` pieces of ``text``, checking the deadline between them."""
    for piece in chunks(text):
        budget.check_time()
        yield TextUnit(where, piece)


def extract_text(src: Source, budget: Budget, charset: str | None = None) -> Iterator[TextUnit]:
    yield from text_units(decode(src.data, charset), src.where, budget)


# An inline scan (Budget.inline) leaves HTML with more tags than this to a worker: the stdlib's
# parser takes ~3 us a tag, all in one call (128 KiB of table cells: ~70 ms).
INLINE_MAX_TAGS = 2000


def extract_html(src: Source, budget: Budget, charset: str | None = None) -> Iterator[TextUnit]:
    if budget.inline and src.data.count(b"<") > INLINE_MAX_TAGS:
        raise NeedsWorkerError("tag-heavy html is scanned in a worker")
    yield from text_units(html_to_text(decode(src.data, charset)), src.where, budget)


class _HtmlText(HTMLParser):
    """Collects visible text; entities are decoded by the parser (convert_charrefs)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _CELL_TAGS:
            self.out.append("\t")  # cells of one table row stay on one line
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, script and style dropped, blocks on their own lines."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "".join(parser.out)
