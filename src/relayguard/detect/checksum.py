"""Modulus 11 and the number ranges of the UK health identifiers.

The three ten-digit identifiers share one check digit algorithm and are told apart by their
first digits: CHI numbers start with a day of the month (01-31), Northern Ireland H&C numbers with
320-399, NHS numbers with 400-499 or 600-799 (999 is reserved for test numbers). The ranges do not
overlap, so one number is at most one kind.
"""

from __future__ import annotations

import datetime as dt

NHS = "nhs_number"
CHI = "chi_number"
HC = "hc_number"
ID_KINDS = (NHS, CHI, HC)
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def _triple_sums(weights: tuple[int, ...]) -> list[int]:
    return [sum(int(d) * w for d, w in zip(f"{i:03d}", weights, strict=True)) for i in range(1000)]


# The weighted sum of nine digits as three table lookups, one per group of three digits: integer
# arithmetic on the whole number costs a fraction of a per-digit loop, and tables are looked up
# once per candidate in a spreadsheet column of a million numbers.
_SUMS = (_triple_sums(_WEIGHTS[:3]), _triple_sums(_WEIGHTS[3:6]), _triple_sums(_WEIGHTS[6:]))


def mod11_ok(digits: str) -> bool:
    """True when the tenth digit is the modulus 11 check digit of the first nine."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    return number_ok(int(digits))


def number_ok(number: int) -> bool:
    """:func:`mod11_ok` for a ten-digit number given as an int (leading zeros implied)."""
    high, mid, low = _SUMS
    total = high[number // 10_000_000] + mid[number // 10_000 % 1000] + low[number // 10 % 1000]
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == number % 10


def classify(digits: str) -> str | None:
    """The kind of identifier ``digits`` (ten digits, no separators) is, or None."""
    return classify_number(int(digits))


def classify_number(number: int) -> str | None:
    """:func:`classify` for a ten-digit number given as an int (leading zeros implied)."""
    prefix = number // 10_000_000
    if 400 <= prefix <= 499 or 600 <= prefix <= 799 or prefix == 999:
        kind = NHS
    elif 320 <= prefix <= 399:
        kind = HC
    elif _chi_date_ok(number // 10_000):
        kind = CHI
    else:
        return None
    return kind if number_ok(number) else None


def _chi_date_ok(ddmmyy: int) -> bool:
    day, month, year = ddmmyy // 10_000, ddmmyy // 100 % 100, ddmmyy % 100
    # The century is not in the number: a date valid in either century will do (29 Feb).
    return any(_real_date(century + year, month, day) for century in (1900, 2000))


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True
