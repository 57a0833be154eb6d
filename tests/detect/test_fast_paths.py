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


# DATE_RE as it was before its leading digit was moved out of the alternatives (ASCII digits).
_PLAIN_DATE_RE = re.compile(
    r"(?<![0-9/.-])(?P<d>[0-9]{1,2})(?P<s>[/.-])(?P<m>[0-9]{1,2})(?P=s)(?P<y>[0-9]{4}|[0-9]{2})(?![0-9/])"
    r"|(?<![0-9/.-])(?P<iy>[0-9]{4})-(?P<im>[0-9]{2})-(?P<id>[0-9]{2})(?![0-9-])"
    rf"|\b(?P<td>[0-9]{{1,2}})(?:st|nd|rd|th)?\s+(?P<tm>{p._MONTHS})\.?,?\s+(?P<ty>[0-9]{{4}})\b",
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


# Identifiers, postcodes and dates with runs of prose between them just shorter and just longer
# than a window's gap, and characters that make the text Latin-1, UTF-16 or wider.
_NUMBER_PIECES = ["943 476 5919", "9434765919", "943-476-5919", "0101011234", "SW1A 1AA", "LE1 5NP",
                  "DOB 12/03/1961", "born 3 March 1950", "1.5", "2,943", " ", "\n", "x" * 13, "y" * 14,
                  "z" * 15, "w" * 16, "NHS", "é", "\u2019", "\U0001f600", "7", "07700 900123"]


def _unwindowed_hits(text: str) -> list[finders.Hit]:
    dobs, postcodes = finders.dob_hits(text), finders.postcode_hits(text)
    support = sorted(h[1] for h in (*dobs, *postcodes))
    return [*dobs, *postcodes, *finders.id_hits(text, None, lambda: support)]


@pytest.mark.parametrize("seed", range(20))
def test_digit_windows_find_what_the_whole_text_holds(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        text = _random_text(rng, _NUMBER_PIECES, rng.randint(0, 12))
        assert finders.builtin_hits(text) == _unwindowed_hits(text), text


@pytest.mark.parametrize("text", ["", "no numbers at all here", "é\u2019 still none"])
def test_text_without_digits_has_no_windows(text: str) -> None:
    assert finders.digit_windows(text) == []


def test_windows_hold_every_digit_and_end_past_it() -> None:
    text = "a" * 40 + "12" + "b" * 20 + "3" + "c" * 5 + "4\u2019" + "d" * 100 + "5"
    windows = finders.digit_windows(text)
    # 20 letters part "12" from "3"; 5 do not part "3" from "4"; each window ends 7 past a digit
    assert windows == [(40, 41 + 8), (62, 68 + 8), (len(text) - 1, len(text))]
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    assert all(any(lo <= i < hi for lo, hi in windows) for i in digits)


@pytest.mark.parametrize("text", ["1 \U0001f600", ("1" + "x" * 16) * 40])
def test_dense_or_wide_text_is_scanned_whole(text: str) -> None:
    assert finders.digit_windows(text) == [(0, len(text))]
