"""The built-in detectors over one text unit: health identifiers, dates of birth, postcodes.

Each finder returns :class:`Match` es with the normalised value (digits only, ISO date, postcode
without spaces). Confidence for identifiers needs support, because about one in eleven random
ten-digit numbers passes modulus 11: a cue word nearby, an identifier column header, or a date of
birth or postcode on the same line (a row, for tables). The "several distinct numbers in one
place" support is applied later, when matches are tallied per place.
"""

from __future__ import annotations

import datetime as dt
import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from relayguard.detect import patterns as p
from relayguard.detect.checksum import classify
from relayguard.extract.base import Cells

DOB = "date_of_birth"
POSTCODE = "postcode"
_EARLIEST_BIRTH_YEAR = 1880


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    value: str  # normalised; raw identifiers never leave the detect package
    start: int
    end: int
    confident: bool = True


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


def find_all(text: str, cells: Cells | None = None) -> list[Match]:
    """Every built-in match in ``text``: dates of birth, postcodes, then identifiers."""
    dobs = find_dobs(text, cells)
    postcodes = find_postcodes(text)
    support = sorted(m.start for m in (*dobs, *postcodes))
    return [*dobs, *postcodes, *find_ids(text, cells, support)]


def find_ids(text: str, cells: Cells | None = None, support: list[int] | None = None) -> list[Match]:
    """Valid NHS, CHI and H&C numbers; confident when a cue, header or same-line support exists."""
    found = []
    for m in p.ID_RE.finditer(text):
        start, end = m.span()
        if m.group(1) and _spaced_run_continues(text, start, end, m.group(1)):
            continue
        digits = m.group().replace(" ", "").replace("-", "")
        kind = classify(digits)
        if kind is None:
            continue
        # Cheapest evidence first: a header lookup, then the row, then the cue-word search.
        confident = (_header_supports(cells, start) or _same_line(text, start, support or [])
                     or _has_cue(text, start, end))
        found.append(Match(kind, digits, start, end, confident))
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


def _header_supports(cells: Cells | None, pos: int) -> bool:
    header = header_at(cells, pos)
    return header is not None and _is_id_header(header)


def _same_line(text: str, pos: int, support: list[int]) -> bool:
    if not support:
        return False
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    i = bisect_left(support, line_start)
    return i < len(support) and (line_end < 0 or support[i] < line_end)


def find_postcodes(text: str) -> list[Match]:
    """UK postcodes, normalised to upper case without spaces.

    The same matches as ``POSTCODE_RE.finditer(text)``: every match ends with an inward code, and
    two matches cannot overlap (one could only start after the other's space, at a digit), so
    trying the full pattern just before each inward code finds them all, in order.
    """
    found = []
    for hit in p.INWARD_RE.finditer(text):
        end = hit.end()
        # A search from pos still sees the characters before pos for its \b; endpos leaves one
        # character after the inward code visible to the trailing \b.
        for m in p.POSTCODE_RE.finditer(text, max(0, hit.start() - p.POSTCODE_BEFORE), end + 1):
            if m.end() == end:
                found.append(Match(POSTCODE, (m.group("out") + m.group("in")).upper(), m.start(), end))
    return found


def find_dobs(text: str, cells: Cells | None = None) -> list[Match]:
    """Dates next to a birth cue word, or in a column headed like "DOB"."""
    spans: dict[int, Match] = {}
    today = dt.date.today()
    for cue in _dob_cues(text):
        lo = max(0, cue.start() - p.DOB_BEFORE)
        for m in p.DATE_RE.finditer(text, lo, cue.end() + p.DOB_AFTER):
            _add_date(spans, m, today)
    if cells is not None and any(h and _is_dob_header(h) for h in set(cells.headers)):
        for m in p.DATE_RE.finditer(text):
            header = header_at(cells, m.start())
            if header and _is_dob_header(header):
                _add_date(spans, m, today)
    return sorted(spans.values(), key=lambda x: x.start)


def _dob_cues(text: str) -> Iterator[re.Match[str]]:
    # Lower-casing and four substring searches run at over 1 GB/s; most text has no cue at all.
    lowered = text.lower()
    if any(w in lowered for w in p.DOB_CUE_WORDS) or any(c in text for c in p.DOB_CUE_ODD_I):
        yield from p.DOB_CUE_RE.finditer(text)


def _add_date(spans: dict[int, Match], m: re.Match[str], today: dt.date) -> None:
    if m.start() in spans:
        return
    born = parse_date(m, today)
    if born is not None:
        spans[m.start()] = Match(DOB, born.isoformat(), m.start(), m.end())


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
