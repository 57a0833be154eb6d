"""Compiled patterns shared by the detectors (stdlib ``re``: faster than ``regex`` here).

Digits are ASCII digits, ``[0-9]``, never ``\\d`` (which takes any script's): UK identifiers,
dates and postcodes are written with them, and the finders skip text without them
(``finders.digit_windows``).
"""

from __future__ import annotations

import re

# Ten digits as 3-3-4 (plain, spaced or dashed, one separator throughout) or CHI's 6-4. Not part
# of a longer digit run and not next to a decimal point or thousands comma.
# It starts with a plain [0-9] so the engine can skip ahead to digits (over four times faster than
# leading lookbehinds on prose); the lookbehinds then look at the character before that digit.
ID_RE = re.compile(
    r"[0-9](?<![0-9][0-9])(?<![0-9][.,][0-9])"
    r"(?:[0-9]{2}([ -]?)[0-9]{3}\1[0-9]{4}|[0-9]{5}[ -][0-9]{4})"
    r"(?![0-9])(?![.,][0-9])"
)
# Words that make a nearby ten-digit number an identifier rather than an order reference.
CUE_RE = re.compile(
    r"\b(?:nhs|chi|h\s?&\s?c|h\+c|hcn|patients?|hospital\s+(?:no|number)|mrn|dob|d\.o\.b"
    r"|date\s+of\s+birth|born|community\s+health\s+index|health\s+and\s+care)\b",
    re.I,
)
CUE_WINDOW = 60  # characters either side of a number in which a cue word counts

# Column headers that name an identifier column or a date-of-birth column.
ID_HEADER_RE = re.compile(
    r"nhs|\bchi\b|h\s?&\s?c|\bhcn\b|health\s+and\s+care|patient\s*(?:id|no|num)|hospital\s*(?:no|num)"
    r"|\bmrn\b",
    re.I,
)
DOB_HEADER_RE = re.compile(r"\bdob\b|d\.o\.b|birth|\bborn\b", re.I)

DOB_CUE_RE = re.compile(r"\b(?:dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?)(?!\w)", re.I)
# Every DOB cue contains one of these once lower-cased, so text without them can skip the cue
# pattern (which scans at about 50 MB/s). Under re.I, U+0130 and U+0131 also match "i" but do not
# lower-case to it: text holding either always runs the full pattern.
DOB_CUE_WORDS = ("dob", "d.o.b", "birth", "born")
DOB_CUE_ODD_I = ("\u0130", "\u0131")
DOB_BEFORE = 30  # a date this far before a cue ("02/03/1951 (DOB)") counts
DOB_AFTER = 40  # a date this far after a cue ("DOB: 02/03/1951") counts

_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    "|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
MONTH_NUMBERS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
# d/m/y, ISO y-m-d, or "3rd March 1951". Every form starts with a digit, so that digit leads the
# pattern (the engine then skips ahead to digits, 2.5x faster than leading lookbehinds); each
# form's lookbehind then looks at the character before it, and its first group holds the rest of
# the day or year: parse_date puts the leading digit back. Every form fails after a digit (each
# lookbehind refuses a digit, a word character, there), so one shared lookbehind turns those
# positions away first: tables are dense in long digit runs, and this is a fifth faster there.
DATE_RE = re.compile(
    r"[0-9](?<![0-9][0-9])(?:"
    r"(?<![0-9/.-][0-9])(?P<d>[0-9]?)(?P<s>[/.-])(?P<m>[0-9]{1,2})(?P=s)(?P<y>[0-9]{4}|[0-9]{2})(?![0-9/])"
    r"|(?<![0-9/.-][0-9])(?P<iy>[0-9]{3})-(?P<im>[0-9]{2})-(?P<id>[0-9]{2})(?![0-9-])"
    rf"|(?<!\w[0-9])(?P<td>[0-9]?)(?:st|nd|rd|th)?\s+(?P<tm>{_MONTHS})\.?,?\s+(?P<ty>[0-9]{{4}})\b"
    r")",
    re.I,
)

# UK postcode: outward code (A9, A99, A9A, AA9, AA99, AA9A) then inward code (9AA).
POSTCODE_RE = re.compile(
    r"\b(?P<out>[A-Z]{1,2}[0-9][A-Z0-9]?|GIR)\s?(?P<in>[0-9][ABD-HJLNP-UW-Z]{2})\b",
    re.I,
)
# The inward code alone: it starts with a digit, so the engine skips ahead through prose about
# four times faster than POSTCODE_RE, whose leading \b defeats that. POSTCODE_RE then runs only on the
# few characters before each hit (the outward code and a space are at most POSTCODE_BEFORE).
INWARD_RE = re.compile(r"[0-9][ABD-HJLNP-UW-Z]{2}\b", re.I)
POSTCODE_BEFORE = 5
