"""A fast reader for plain worksheet XML, checked so strictly that it cannot disagree with the parser.

A worksheet of a million cells costs the XML parser millions of element objects and events. Most
sheets are written by Excel or a library in one plain shape: ``<row r="2"><c r="A2" t="s"><v>3</v>
</c>...</row>``. For those, one regular expression validates a whole run of rows and another then
reads their cells, at several times the speed.

Security: a crafted file must never make data invisible to detection, so this reader either
yields exactly the rows the parser would (same values, same references, same order) or raises
:class:`Declined` and the caller reads the part with the parser instead. It declines on anything
outside a narrow grammar: another encoding or a byte order mark, ``<!`` anywhere (DOCTYPE, ENTITY,
comments, CDATA), ``&`` inside the rows (entity and character references), a carriage return in
text, namespace prefixes or declarations within the rows, unknown or reordered attributes, rich or
nested elements, and any ``row`` element outside ``<sheetData>``. So no declaration is ever read,
let alone expanded: the parser path and its DOCTYPE/ENTITY screen stay in front of every other case.

What lies outside the rows (the part's head and tail) is not interpreted, but expat reads it, rows
left out (:class:`_Skeleton`): the head must leave it inside ``<sheetData>``, and a file that is not
well-formed must fail as it does with the parser (well-formed rows can be cut out of well-formed
XML without changing that).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import IO
from xml.parsers import expat

from relayguard.extract.base import BudgetExceededError, UnscannableError

CHUNK = 256 * 1024
MAX_EDGE = 1 << 20  # the head (before the rows) and tail (after them) are small in real sheets
_SML = ("http://schemas.openxmlformats.org/spreadsheetml/2006/main",
        "http://purl.oclc.org/ooxml/spreadsheetml/main")

# A character XML keeps as is in an attribute value ("<" and "&" excluded), minus ">", which XML
# allows there but which would let a row's start tag end inside a value for the token pattern.
_IN_VALUE = r'[^"<&>\x00-\x1f\ufffe\uffff]'
_VALUE = rf'"{_IN_VALUE}*"'
_TEXT = r"[^<&>\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*"  # element text taken as written
_WS = r"[ \t\n\r]*"


def _opt(pattern: str) -> str:
    # Optional as an empty alternative: the same matches as "(?:...)?", and re runs a branch faster.
    return f"(?:{pattern}|)"


def _attrs(*names: str) -> str:
    # A fixed order (the one Excel writes) makes a duplicate attribute impossible to accept.
    return "".join(_opt(f" {name}={_VALUE}") for name in names)


_ROW_ATTRS = ("r", "spans", "s", "customFormat", "ht", "hidden", "customHeight", "outlineLevel",
              "collapsed", "thickTop", "thickBot", "ph", "x14ac:dyDescent")
_FORMULA = (rf"<f{_attrs('t', 'aca', 'ref', 'dt2D', 'dtr', 'del1', 'del2', 'r1', 'r2', 'ca', 'si', 'bx')}"
            rf"(?:/>|>{_TEXT}</f>)")


def _cell(capture: bool) -> str:
    def group(body: str) -> str:
        return f"({body})" if capture else f"(?:{body})"

    ref, kind, text = group(_IN_VALUE + "+"), group(_IN_VALUE + "+"), group(_TEXT)
    start = f'<c r="{ref}"{_attrs("s")}' + _opt(f' t="{kind}"') + _attrs("cm", "vm", "ph")
    number = _opt(_FORMULA) + _opt(f"<v>{text}</v>|<v/>")
    inline = "<is><t" + _opt(' xml:space="preserve"') + f">{text}</t></is>"
    return f"{start}(?:/>|>(?:{number}|{inline})</c>)"


def _rows_pattern(row_attrs: str) -> re.Pattern[str]:
    # A run of whole rows, validated in one call: their cells are read only after the run matched.
    return re.compile(rf"(?:{_WS}<row{row_attrs}(?:/>|>(?:{_WS}{_cell(False)})*{_WS}</row>))*")


# Excel marks rows with x14ac:dyDescent; the prefix is accepted only where the root declares it.
_ROWS_RES = {True: _rows_pattern(_attrs(*_ROW_ATTRS)), False: _rows_pattern(_attrs(*_ROW_ATTRS[:-1]))}
# Within validated rows: a cell (its reference is never empty), or a row's end ("" for every group).
_TOKEN_RE = re.compile(rf"{_cell(True)}|</row>|<row[^>]*/>")
# Any element whose local name is "row", prefixed or not: none may stand outside the rows.
_ANY_ROW_RE = re.compile(r"<(?:[^\s<>/!?:]+:)?row[\s/>]")
_ENCODING_RE = re.compile(r"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_NON_WS_RE = re.compile(r"[^ \t\n\r]")
_OPEN, _CLOSE = "<sheetData>", "</sheetData>"

Rows = Iterator[tuple[list[str], list[str]]]  # each row's values and their cell references


class Declined(Exception):  # noqa: N818 - not an error: the caller's cue to use the parser
    """This part is not plain enough for the fast reader; read it with the parser."""


def rows(stream: IO[bytes], strings: list[str]) -> Rows:
    """(values, references) of every row element of the worksheet in ``stream``, in order.

    The same as the parser path's rows, ``strings`` being the shared strings; empty rows are
    yielded too, so that a caller falling back to the parser after :class:`Declined` can skip
    exactly the rows it already has.
    """
    for run in runs(stream):
        yield from run_rows(run, strings)


def run_rows(run: str, strings: list[str]) -> Rows:
    """The rows of one run that :func:`runs` gave."""
    return _rows(_TOKEN_RE.findall(run), strings)


def runs(stream: IO[bytes]) -> Iterator[str]:
    """The worksheet's row elements as runs of validated XML text (whole rows, about a read
    chunk's worth each), in order; :func:`run_rows` reads one. A run holds exactly as many rows
    as it holds ``<row`` (the grammar lets that text appear nowhere but in a row's start tag).

    Declines as :func:`rows` does, and only once the runs before are given: a caller that falls
    back to the parser skips the rows it already has.
    """
    reader = _Reader(stream)
    head, buf = reader.until(_OPEN)
    _check_head(head)
    skeleton = _Skeleton(head + _OPEN)
    rows_re = _ROWS_RES[skeleton.x14ac]
    pos = 0
    while True:
        end = rows_re.match(buf, pos).end()  # type: ignore[union-attr]  # a * pattern always matches
        if end > pos:
            yield buf[pos:end]
        pos = _skip_ws(buf, end)
        if buf.startswith(_CLOSE, pos):
            break
        if buf.find("</row>", pos) >= 0:
            raise Declined  # a whole row is there, and it is not plain
        buf, pos = reader.more(buf[pos:]), 0
    tail = buf[pos:] + reader.rest()
    _check_edge(tail)
    skeleton.feed(tail, final=True)


def _rows(tokens: list[tuple[str, str, str, str]], strings: list[str]) -> Rows:
    """Rows out of the tokens of a validated run. The per-cell work is inlined: it runs millions
    of times, and it is :func:`cell_value` with the commonest cases first."""
    values: list[str] = []
    refs: list[str] = []
    n_strings = len(strings)
    for ref, kind, raw, inline in tokens:
        if not ref:
            yield values, refs
            values, refs = [], []
            continue
        if kind == "inlineStr":
            value = inline
        elif not raw:
            continue
        elif not kind and "e" not in raw and "E" not in raw:
            value = raw  # a plain number, as number_text would leave it
        elif kind == "s" and raw.isdigit() and int(raw) < n_strings:
            value = strings[int(raw)]  # a shared string, as cell_value would find it
        else:
            # An absent type is "" here (the reader accepts no empty type attribute), None there.
            value = cell_value(kind or None, raw, strings)
        if value:
            values.append(value)
            refs.append(ref)


def cell_value(kind: str | None, raw: str | None, strings: list[str]) -> str:
    """What a person sees in a cell of type ``kind`` whose ``<v>`` holds ``raw``."""
    if not raw:
        return ""
    if kind == "s":
        index = int(raw) if raw.isdigit() else -1
        return strings[index] if 0 <= index < len(strings) else ""
    return number_text(raw) if kind is None or kind == "n" else raw


def number_text(raw: str) -> str:
    """Excel may store 4366141345 as 4.366141345E9; show it as the digits a person would see."""
    if "e" in raw or "E" in raw:
        try:
            number = float(raw)
        except ValueError:
            return raw
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
    return raw


class _Reader:
    """The part as text, a chunk at a time, strictly UTF-8."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.ended = False

    def read(self) -> str:
        try:
            data = self.stream.read(CHUNK)
        except BudgetExceededError:
            raise  # out of time: the parser would be too
        except UnscannableError as exc:
            # Over a size or ratio limit, or corrupt: the parser meets the same bytes at its own
            # read boundaries, so it is the one to say which rows came before the failure.
            raise Declined from exc
        self.ended = not data
        try:
            return self.decoder.decode(data, final=self.ended)
        except UnicodeDecodeError as exc:
            raise Declined from exc

    def more(self, buf: str) -> str:
        if self.ended or len(buf) > MAX_EDGE:
            raise Declined  # truncated, or one "row" larger than any real one
        return buf + self.read()

    def until(self, marker: str) -> tuple[str, str]:
        """What comes before ``marker`` from the start, and what was read after it."""
        buf = ""
        while marker not in buf:
            buf = self.more(buf)
        head, _, rest = buf.partition(marker)
        return head, rest

    def rest(self) -> str:
        """Everything still unread (the tail of the part, which is small)."""
        out: list[str] = []
        size = 0
        while not self.ended:
            out.append(self.read())
            size += len(out[-1])
            if size > MAX_EDGE:
                raise Declined
        return "".join(out)


def _check_head(head: str) -> None:
    """Decline unless ``head`` is in UTF-8 without a byte order mark, and plain."""
    if head.startswith("\ufeff"):
        raise Declined  # a byte order mark: let the parser deal with it
    encoding = _ENCODING_RE.match(head)
    if encoding:
        try:
            if codecs.lookup(encoding.group(1)).name != "utf-8":
                raise Declined
        except LookupError as exc:
            raise Declined from exc
    _check_edge(head)


def _check_edge(text: str) -> None:
    """The head or tail: nothing the parser would read as a row, nothing declared."""
    if "<!" in text or _ANY_ROW_RE.search(text):
        raise Declined


def _skip_ws(buf: str, pos: int) -> int:
    m = _NON_WS_RE.search(buf, pos)
    return m.start() if m else len(buf)


class _Skeleton:
    """The part through expat without its rows: the head now, the tail later.

    The head must leave expat inside ``<sheetData>``, the child of the root ``<worksheet>``, both in
    the spreadsheet namespace: then what follows is element content in which an unprefixed
    ``<row>`` is what the parser reads as a row (and not, say, text inside a processing
    instruction the head left open). Well-formed rows cut out of well-formed XML leave it
    well-formed, so the tail then fails here exactly when the whole part fails in the parser.
    """

    def __init__(self, head: str) -> None:
        self.parser = expat.ParserCreate(None, "}")  # namespaces on, as ElementTree's parser has them
        self.open: list[str] = []
        self.root_prefixes: set[str] = set()
        self.parser.StartNamespaceDeclHandler = self._declared
        self.parser.StartElementHandler = lambda name, _attrs: self.open.append(name)
        self.parser.EndElementHandler = lambda _name: self.open.pop()
        self.feed(head)
        if self.open not in ([f"{ns}}}worksheet", f"{ns}}}sheetData"] for ns in _SML):
            raise Declined
        # Rows may carry x14ac:dyDescent only where the root binds the prefix (sheetData binds none).
        self.x14ac = "x14ac" in self.root_prefixes

    def _declared(self, prefix: str | None, _uri: str) -> None:
        if not self.open and prefix:  # called before the element starts: none open means the root
            self.root_prefixes.add(prefix)

    def feed(self, text: str, *, final: bool = False) -> None:
        try:
            self.parser.Parse(text.encode(), final)
        except expat.ExpatError as exc:
            raise Declined from exc
        except IndexError as exc:  # an end tag with nothing open: not well-formed either
            raise Declined from exc
