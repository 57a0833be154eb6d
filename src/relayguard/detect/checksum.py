"""Modulus 11 and the number ranges of the UK health identifiers.

The three ten-digit identifiers share one check digit algorithm and are told apart by their
first digits: CHI numbers start with a day of the month (01-31), Northern Ireland H&C numbers with
320-399, NHS numbers with 400-499 or 600-799 (999 is reserved for test numbers). The ranges do not
overlap, so one number is at most one kind.
"""

from __future__ import annotations

import datetime as dt
from operator import mul

NHS = "nhs_number"
CHI = "chi_number"
HC = "hc_number"
ID_KINDS = (NHS, CHI, HC)
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def mod11_ok(digits: str) -> bool:
    """True when the tenth digit is the modulus 11 check digit of the first nine."""
    if len(digits) != 10 or not digits.isdigit():
        return False
    total: int = sum(map(mul, map(int, digits[:9]), _WEIGHTS))  # C-level loop: no per-digit frame
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def classify(digits: str) -> str | None:
    """The kind of identifier ``digits`` (ten digits, no separators) is, or None."""
    prefix = int(digits[:3])
    if 400 <= prefix <= 499 or 600 <= prefix <= 799 or prefix == 999:
        kind = NHS
    elif 320 <= prefix <= 399:
        kind = HC
    elif _chi_date_ok(digits[:6]):
        kind = CHI
    else:
        return None
    return kind if mod11_ok(digits) else None


def _chi_date_ok(ddmmyy: str) -> bool:
    day, month, year = int(ddmmyy[:2]), int(ddmmyy[2:4]), int(ddmmyy[4:6])
    # The century is not in the number: a date valid in either century will do (29 Feb).
    return any(_real_date(century + year, month, day) for century in (1900, 2000))


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    return True
