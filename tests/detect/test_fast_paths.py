"""The prefiltered detectors find exactly what their plain patterns find."""

from __future__ import annotations

import random
import re

import pytest

from relayguard.detect import finders
from relayguard.detect import patterns as p

# Postcode pieces, separators and look-alikes, so random strings are dense in near misses.
_PIECES = ["A", "B", "E", "L", "G", "I", "R", "S", "W", "1", "2", "9", "0", " ", "  ", "\t", "\n",
           "_", "-", "GIR", "0AA", "LE1", "2AB", "5NP", "EC1A", "W1A", "1BB", "x", "\u0662", "é"]
_CUES = ["dob", "DOB", "d.o.b.", "born on", "Date of  Birth", "birthdate", "b\u0131rth", "B\u0130RTH",
         " ", "\n", "12/03/1961", "3 March 1950", "x", "boron", "unborn"]


def _random_text(rng: random.Random, pieces: list[str], n: int) -> str:
    return "".join(rng.choice(pieces) for _ in range(n))


@pytest.mark.parametrize("seed", range(20))
def test_postcodes_match_the_plain_pattern(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        text = _random_text(rng, _PIECES, 40)
        expected = [(m.start(), m.end(), (m.group("out") + m.group("in")).upper())
                    for m in p.POSTCODE_RE.finditer(text)]
        assert [(m.start, m.end, m.value) for m in finders.find_postcodes(text)] == expected, text


@pytest.mark.parametrize("seed", range(10))
def test_dob_cue_gate_never_skips_a_cue(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        text = _random_text(rng, _CUES, 8)
        expected = [m.span() for m in p.DOB_CUE_RE.finditer(text)]
        assert [m.span() for m in finders._dob_cues(text)] == expected, text


# DATE_RE as it was before its leading digit was moved out of the alternatives.
_PLAIN_DATE_RE = re.compile(
    r"(?<![\d/.-])(?P<d>\d{1,2})(?P<s>[/.-])(?P<m>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})(?![\d/])"
    r"|(?<![\d/.-])(?P<iy>\d{4})-(?P<im>\d{2})-(?P<id>\d{2})(?![\d-])"
    rf"|\b(?P<td>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<tm>{p._MONTHS})\.?,?\s+(?P<ty>\d{{4}})\b",
    re.I,
)
_DATE_PIECES = ["1", "2", "12", "31", "/", ".", "-", " ", "x", "_", "March", "Mar.", "mar", ",", "st", "th",
                "1951", "2001-02-03", "\u0663", "a", "  "]
_SAME_GROUPS = ("s", "m", "y", "im", "id", "tm", "ty")


@pytest.mark.parametrize("seed", range(10))
def test_dates_match_the_plain_pattern(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2000):
        text = _random_text(rng, _DATE_PIECES, 10)
        expected = [(m.span(), m.group(*_SAME_GROUPS)) for m in _PLAIN_DATE_RE.finditer(text)]
        assert [(m.span(), m.group(*_SAME_GROUPS)) for m in p.DATE_RE.finditer(text)] == expected, text
