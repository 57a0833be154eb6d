"""The prefiltered detectors find exactly what their plain patterns find."""

from __future__ import annotations

import random

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
