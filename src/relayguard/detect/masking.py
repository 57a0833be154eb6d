"""Masked forms of found values: enough for a reviewer to recognise, not enough to identify."""

from __future__ import annotations

import re

from relayguard.detect.checksum import ID_KINDS
from relayguard.detect.finders import DOB, POSTCODE, find_dobs, find_ids

_YEAR_RE = re.compile(r"(?<!\d)(\d{4})(?!\d)")


def mask(kind: str, value: str) -> str:
    """``value`` of ``kind`` masked: NHS ``943 *** **21``, DOB ``**/**/1951``, postcode ``LE1 ***``."""
    if kind in ID_KINDS:
        digits = re.sub(r"\D", "", value)
        return f"{digits[:3]} *** **{digits[8:10]}" if len(digits) == 10 else "*" * len(value)
    if kind == DOB:
        year = _YEAR_RE.search(value)
        return f"**/**/{year.group(1) if year else '****'}"
    if kind == POSTCODE:
        compact = value.replace(" ", "").upper()
        return f"{compact[:-3]} ***" if len(compact) > 3 else "***"
    if kind.startswith("term:"):
        return value.lower()  # an admin-chosen clinical word, not an identifier
    return _mask_generic(value)


def _mask_generic(value: str) -> str:
    if len(value) <= 6:
        return "*" * len(value)
    return value[:2] + "*" * (len(value) - 4) + value[-2:]


def mask_text(text: str) -> str:
    """``text`` with every valid NHS, CHI and H&C number and every date of birth masked."""
    spans = [(m.start, m.end, mask(m.kind, m.value)) for m in (*find_ids(text), *find_dobs(text))]
    out, pos = [], 0
    for start, end, masked in sorted(spans):
        if start < pos:
            continue  # overlapping spans: the first one already covers this text
        out.append(text[pos:start])
        out.append(masked)
        pos = end
    out.append(text[pos:])
    return "".join(out)
