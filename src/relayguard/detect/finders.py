"""The built-in detectors over one text unit: health identifiers, dates of birth, postcodes.

Each finder returns :class:`Match` es with the normalised value (digits only, ISO date, postcode
without spaces). Confidence for identifiers needs support, because about one in eleven random
ten-digit numbers passes modulus 11: a cue word nearby, an identifier column header, or a date of
birth or postcode on the same line (a row, for tables). The "several distinct numbers in one
place" support is applied later, when matches are tallied per place.

Speed: a spreadsheet can hold a million identifiers, so the scan itself uses :func:`builtin_hits`,
which returns plain tuples (:data:`Hit`) with identifiers as ints; :class:`Match` objects are
only built for the callers that want them (masking, tests). Every built-in match holds an ASCII
digit, and ``re`` looks for a digit at about 4 ns a character where ``bytes.find`` takes a tenth
of a nanosecond, so :func:`digit_windows` finds the stretches of text that hold digits first and
the patterns run only there: prose without a number costs almost nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import itemgetter

from relayguard.detect import patterns as p
from relayguard.detect.checksum import classify_number
from relayguard.extract.base import Cells

DOB = "date_of_birth"
POSTCODE = "postcode"
_EARLIEST_BIRTH_YEAR = 1880
_DATE_CACHE_SIZE = 50_000  # distinct date spellings remembered; birth dates span ~40,000 days

Key = int | str  # a normalised value: identifiers as ints (compact), other kinds as text
Hit = tuple[str, int, int, Key, bool]  # kind, start, end, normalised value, confident


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    value: str  # normalised; raw identifiers never leave the detect package
    start: int
    end: int
    confident: bool = True


def value_text(key: Key) -> str:
    """The normalised value as text: identifiers keep their ten digits (CHI's leading zero)."""
    return f"{key:010d}" if isinstance(key, int) else key


def header_at(cells: Cells | None, pos: int) -> str | None:
    """The column header of the cell holding offset ``pos``, if the unit is tabular."""
    if cells is None or not cells.starts:
        return None
    i = cells.index(pos)
    return cells.headers[i] if i >= 0 else None


@lru_cache(maxsize=4096)
def _is_id_header(header: str) -> bool:
    return p.ID_HEADER_RE.search(header) is not None


@lru_cache(maxsize=4096)
def _is_dob_header(header: str) -> bool:
    return p.DOB_HEADER_RE.search(header) is not None


def _headers_where(cells: Cells | None, test: Callable[[str], bool]) -> frozenset[str | None]:
    """The unit's distinct column headers that pass ``test``: checked once per header, not per cell."""
    if cells is None or not cells.starts:
        return frozenset()
    return frozenset(h for h in set(cells.headers) if h and test(h))


def find_all(text: str, cells: Cells | None = None) -> list[Match]:
    """Every built-in match in ``text``: dates of birth, postcodes, then identifiers."""
    return _matches(builtin_hits(text, cells))


def builtin_hits(text: str, cells: Cells | None = None) -> list[Hit]:
    """:func:`find_all` as hits, in the same order."""
    windows = digit_windows(text)
    if not windows:
        return []
    dobs = dob_hits(text, cells)
    postcodes = postcode_hits(text, windows)

    def support() -> list[int]:  # only wanted when a number has no header or cue of its own
        return sorted([h[1] for h in dobs] + [h[1] for h in postcodes])

    return [*dobs, *postcodes, *id_hits(text, cells, support, windows)]


# Every character that is not an ASCII digit becomes ".", every digit "0".
_DIGIT_MARKS = bytes(ord("0") if chr(i).isascii() and chr(i).isdigit() else ord(".") for i in range(256))
# A built-in match starts at a digit and ends at most 2 characters after its last one (a
# postcode's inward letters); the lookaheads read 2 more. A window runs this far past its last
# digit (with room to spare), and a stretch of _GAP characters without a digit ends it; _GAP
# must not be less, or windows would overlap and a match be found twice.
_AFTER_DIGIT = 8
_GAP = 16
# Past this many windows for the text's length, digits are dense (a table): one pass over the
# whole text is cheaper than a search per window.
_WINDOWS_PER_KIB = 2

Window = tuple[int, int]  # start, end: where a pattern runs (finditer's pos and endpos)


def digit_windows(text: str) -> list[Window]:
    """Spans of ``text`` that hold every ASCII digit in it, each running :data:`_AFTER_DIGIT`
    characters past its last digit: every built-in match lies inside one, and a pattern run
    window by window (``finditer(text, start, end)``, which still sees the characters before
    ``start`` for its lookbehinds) finds what it finds in the whole text. [] for text without
    digits; the whole text when digits are dense or positions cannot be had cheaply."""
    marks, width = _digit_marks(text)
    if marks is None:
        return [(0, len(text))]
    gap = b"." * (_GAP * width)
    limit = 16 + _WINDOWS_PER_KIB * len(text) // 1024
    found: list[Window] = []
    pos = 0
    while (first := marks.find(b"0", pos)) >= 0:
        if len(found) >= limit:
            return [(0, len(text))]
        gap_at = marks.find(gap, first)
        if gap_at < 0:
            found.append((first // width, len(text)))
            break
        # The byte before the gap is a digit's (the gap is the first run of its length after one).
        found.append((first // width, min(len(text), (gap_at - 1) // width + _AFTER_DIGIT)))
        pos = gap_at + len(gap)
    return found


def _digit_marks(text: str) -> tuple[bytes | None, int]:
    """``text`` as bytes with a byte per character (two for text beyond Latin-1), digits marked.

    In UTF-16 a byte that reads as a digit may belong to another character: that only widens a
    window. Text with characters beyond the BMP (emoji) has no fixed width: None."""
    if text.isascii():
        return text.encode("ascii").translate(_DIGIT_MARKS), 1
    try:
        return text.encode("latin-1").translate(_DIGIT_MARKS), 1
    except UnicodeEncodeError:
        wide = text.encode("utf-16-le")
    if len(wide) != 2 * len(text):
        return None, 1
    return wide.translate(_DIGIT_MARKS), 2


def _matches(hits: list[Hit]) -> list[Match]:
    return [Match(kind, value_text(key), start, end, confident) for kind, start, end, key, confident in hits]


def find_ids(text: str, cells: Cells | None = None, support: list[int] | None = None) -> list[Match]:
    """Valid NHS, CHI and H&C numbers; confident when a cue, header or same-line support exists."""
    return _matches(id_hits(text, cells, lambda: support or []))


def id_hits(text: str, cells: Cells | None, support: Callable[[], list[int]],
            windows: list[Window] | None = None) -> list[Hit]:
    """:func:`find_ids` as hits; ``support`` gives the sorted starts of same-line support on demand."""
    found: list[Hit] = []
    id_headers = _headers_where(cells, _is_id_header)
    starts, headers = (cells.starts, cells.headers) if id_headers and cells else ([], [])
    supports: list[int] | None = None
    for m in _in_windows(p.ID_RE, text, windows):
        start, end = m.span()
        sep = m.group(1)
        if sep and _spaced_run_continues(text, start, end, sep):
            continue
        digits = m.group()
        number = int(digits if len(digits) == 10 else digits.replace(" ", "").replace("-", ""))
        kind = classify_number(number)
        if kind is None:
            continue
        # Cheapest evidence first: the column header, then the row, then the cue-word search.
        if id_headers and start >= starts[0] and headers[bisect_right(starts, start) - 1] in id_headers:
            confident = True
        else:
            if supports is None:
                supports = support()
            confident = _same_line(text, start, supports) or _has_cue(text, start, end)
        found.append((kind, start, end, number, confident))
    return found


def _spaced_run_continues(text: str, start: int, end: int, sep: str) -> bool:
    """A spaced group is part of a longer spaced run of digits (e.g. a phone number)."""
    before = text[max(0, start - 2):start]
    after = text[end:end + 2]
    return (len(before) == 2 and before[1] == sep and before[0].isdigit()) or (
        len(after) == 2 and after[0] == sep and after[1].isdigit())


def _has_cue(text: str, start: int, end: int) -> bool:
    lo = max(0, start - p.CUE_WINDOW)
    return p.CUE_RE.search(text, lo, end + p.CUE_WINDOW) is not None


def _same_line(text: str, pos: int, support: list[int]) -> bool:
    if not support:
        return False
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    i = bisect_left(support, line_start)
    return i < len(support) and (line_end < 0 or support[i] < line_end)


def find_postcodes(text: str) -> list[Match]:
    """UK postcodes, normalised to upper case without spaces."""
    return _matches(postcode_hits(text))


def _in_windows(pattern: re.Pattern[str], text: str, windows: list[Window] | None) -> Iterator[re.Match[str]]:
    """``pattern.finditer(text)``, looking only inside ``windows`` (all of ``text`` if None)."""
    if windows is None:
        return pattern.finditer(text)
    return chain.from_iterable(pattern.finditer(text, start, end) for start, end in windows)


def postcode_hits(text: str, windows: list[Window] | None = None) -> list[Hit]:
    """:func:`find_postcodes` as hits.

    The same matches as ``POSTCODE_RE.finditer(text)``: every match ends with an inward code, and
    two matches cannot overlap (one could only start after the other's space, at a digit), so
    trying the full pattern just before each inward code finds them all, in order.
    """
    found: list[Hit] = []
    search = p.POSTCODE_RE.search
    for hit in _in_windows(p.INWARD_RE, text, windows):
        end = hit.end()
        # A search from pos still sees the characters before pos for its \\b; endpos leaves one
        # character after the inward code visible to the trailing \\b. Searching on from each
        # match's end is what finditer would do; only a match ending with this inward code counts
        # (none can end after it: the inward code is followed by a non-word character).
        m = search(text, max(0, hit.start() - p.POSTCODE_BEFORE), end + 1)
        while m is not None and m.end() < end:
            m = search(text, m.end(), end + 1)
        if m is not None and m.end() == end:
            out, inward = m.group("out", "in")
            found.append((POSTCODE, m.start(), end, (out + inward).upper(), True))
    return found


def find_dobs(text: str, cells: Cells | None = None) -> list[Match]:
    """Dates next to a birth cue word, or in a column headed like "DOB"."""
    return _matches(dob_hits(text, cells))


def dob_hits(text: str, cells: Cells | None = None) -> list[Hit]:
    """:func:`find_dobs` as hits, in order of their start."""
    spans: dict[int, Hit] = {}
    dates = _DATES.today()
    for cue in _dob_cues(text):
        lo = max(0, cue.start() - p.DOB_BEFORE)
        for m in p.DATE_RE.finditer(text, lo, cue.end() + p.DOB_AFTER):
            _add_date(spans, m, dates)
    dob_headers = _headers_where(cells, _is_dob_header)
    if dob_headers and cells:
        in_column = _column_dates(text, cells, dob_headers, dates)
        if not spans:
            return in_column  # in order already, one per start
        for hit in in_column:
            spans.setdefault(hit[1], hit)  # a date a cue found already is the same hit
    return sorted(spans.values(), key=itemgetter(1))


def _column_dates(text: str, cells: Cells, dob_headers: frozenset[str | None],
                  dates: _DateCache) -> list[Hit]:
    """Dates starting in a cell whose column header names a date of birth, in order."""
    found: list[Hit] = []
    starts, headers = cells.starts, cells.headers
    first = starts[0]
    for m in p.DATE_RE.finditer(text):
        start = m.start()
        if start >= first and headers[bisect_right(starts, start) - 1] in dob_headers:
            iso = dates.iso(m)
            if iso is not None:
                found.append((DOB, start, m.end(), iso, True))
    return found


def _dob_cues(text: str) -> Iterator[re.Match[str]]:
    # Lower-casing and four substring searches run at over 1 GB/s; most text has no cue at all.
    lowered = text.lower()
    if any(w in lowered for w in p.DOB_CUE_WORDS) or any(c in text for c in p.DOB_CUE_ODD_I):
        yield from p.DOB_CUE_RE.finditer(text)


def _add_date(spans: dict[int, Hit], m: re.Match[str], dates: _DateCache) -> None:
    start = m.start()
    if start in spans:
        return
    iso = dates.iso(m)
    if iso is not None:
        spans[start] = (DOB, start, m.end(), iso, True)


class _DateCache:
    """Birth dates by their spelling: a register repeats the same few thousand dates.

    What :func:`parse_date` makes of a match depends only on the matched text (each form of
    DATE_RE splits a given text one way) and on today's date, so results are kept per day.
    """

    def __init__(self) -> None:
        self._day = dt.date.min
        self._iso: dict[str, str | None] = {}

    def today(self) -> _DateCache:
        today = dt.date.today()
        if today != self._day:
            self._day, self._iso = today, {}
        return self

    def iso(self, m: re.Match[str]) -> str | None:
        spelling = m.group()
        try:
            return self._iso[spelling]
        except KeyError:
            pass
        born = parse_date(m, self._day)
        if len(self._iso) >= _DATE_CACHE_SIZE:
            self._iso = {}  # a crafted part full of distinct spellings must not grow it forever
        iso = self._iso[spelling] = born.isoformat() if born is not None else None
        return iso


_DATES = _DateCache()


def parse_date(m: re.Match[str], today: dt.date) -> dt.date | None:
    """The date a :data:`patterns.DATE_RE` match names, if it is a plausible birth date."""
    first = m.string[m.start()]  # the leading digit, outside the groups
    sep, d, mo, y, iy, im, iday, td, tm, ty = m.group("s", "d", "m", "y", "iy", "im", "id", "td", "tm", "ty")
    if sep:
        day, month, year = int(first + d), int(mo), _full_year(y)
    elif iy:
        day, month, year = int(iday), int(im), int(first + iy)
    else:
        day, month, year = int(first + td), p.MONTH_NUMBERS[tm[:3].lower()], int(ty)
    try:
        born = dt.date(year, month, day)
    except ValueError:
        return None
    return born if year >= _EARLIEST_BIRTH_YEAR and born <= today else None


def _full_year(text: str) -> int:
    if len(text) == 4:
        return int(text)
    # Two-digit years: a year still ahead this century is a birth year last century.
    yy, this_year = int(text), dt.date.today().year
    return 2000 + yy if 2000 + yy <= this_year else 1900 + yy
