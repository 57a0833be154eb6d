"""The built-in detectors on plain text: identifiers, confidence, dates of birth, postcodes, masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayguard.detect import mask, mask_text
from relayguard.detect.checksum import CHI, HC, NHS, classify, mod11_ok
from relayguard.detect.finders import find_all, find_dobs, find_ids, find_postcodes
from tests.extract.builders import NHS as NHS_NO
from tests.extract.builders import valid_numbers, with_check

CHI_NO = with_check("020351123") or with_check("020351124") or ""
HC_NO = valid_numbers("345", 1)[0]


def _ids(text: str) -> list[tuple[str, str, bool]]:
    return [(m.kind, m.value, m.confident) for m in find_ids(text)]


def test_mod11_accepts_known_numbers_and_rejects_a_changed_digit() -> None:
    """Modulus 11 passes the published example and fails it with the last digit changed."""
    assert mod11_ok("9434765919")
    assert not mod11_ok("9434765918")
    assert not mod11_ok("943476591")


def test_check_digit_ten_is_never_valid() -> None:
    """A number whose check digit would be 10 is invalid whatever its last digit."""
    nine = next(f"{i:09d}" for i in range(400000000, 400001000) if with_check(f"{i:09d}") is None)
    assert not any(mod11_ok(nine + str(d)) for d in range(10))


@pytest.mark.parametrize(("number", "kind"), [(NHS_NO, NHS), (valid_numbers("999", 1)[0], NHS), (HC_NO, HC)])
def test_classify_by_range(number: str, kind: str) -> None:
    """Valid numbers are told apart by their first digits."""
    assert classify(number) == kind


def test_chi_needs_a_real_date() -> None:
    """A CHI number starts with a real DDMMYY date; the same digits after 31/02 are not one."""
    assert CHI_NO
    assert classify(CHI_NO) == CHI
    bad = next(n for n in (with_check(f"310251{i:03d}") for i in range(1000)) if n)
    assert classify(bad) is None


def test_nhs_numbers_outside_issued_ranges_are_ignored() -> None:
    """A checksum-valid number starting 500 or 800 is not an NHS number."""
    assert classify(valid_numbers("500", 1)[0]) is None
    assert classify(valid_numbers("800", 1)[0]) is None


@pytest.mark.parametrize("written", ["4366141345", "436 614 1345", "436-614-1345"])
def test_accepted_layouts_with_a_cue(written: str) -> None:
    """Plain, spaced and dashed NHS numbers next to a cue word are confident findings."""
    assert _ids(f"NHS number: {written}.") == [(NHS, NHS_NO, True)]


@pytest.mark.parametrize("text", [
    "ref 123436614134599", "tel 0436614134512", "amount 1.4366141345", "value 4366141345.5",
    "call +44 436 614 1345 6", "mixed 436 614-1345",
])
def test_no_match_inside_longer_numbers(text: str) -> None:
    """Digits inside a longer run, across a decimal point or with mixed separators never match."""
    assert [v for _, v, _ in _ids(text) if v == NHS_NO] == []


def test_trailing_row_number_does_not_hide_a_number() -> None:
    """A number followed by a separate small number is still found."""
    assert _ids("4366141345 1")[0][1] == NHS_NO


@pytest.mark.parametrize("text", ["Call 01184960000 today", "Call +44 118 496 0000", "Call 0118 496 0000"])
def test_phone_numbers_are_not_identifiers(text: str) -> None:
    """UK phone numbers in either layout produce no identifier."""
    assert _ids(text) == []


def test_valid_number_without_support_is_weak() -> None:
    """A lone valid number with no cue, header or row support is reported but not confident."""
    assert _ids(f"Your order {NHS_NO} has shipped") == [(NHS, NHS_NO, False)]


def test_cue_beyond_the_window_does_not_count() -> None:
    """A cue word far away (over the window) does not make a number confident."""
    assert _ids(f"NHS {'x' * 100} order {NHS_NO}")[0][2] is False


def test_postcode_on_the_same_line_supports() -> None:
    """A postcode on the same line makes a valid number confident; on another line it does not."""
    text = f"Grace {NHS_NO} LE1 5WW"
    assert find_all(text)[-1].confident
    other = f"Grace {NHS_NO}\nLE1 5WW"
    assert not find_all(other)[-1].confident


def test_order_references_failing_checksum_find_nothing() -> None:
    """Twelve order references, all failing modulus 11, produce no identifier at all."""
    refs = ("4676571147, 3614386523, 7176783029, 8324679770, 7900684628, 1865857010, 6646291281, "
            "5225403862, 4348923764, 9101236694, 6109418970, 4047961271")
    assert _ids(f"Order refs: {refs}") == []


@pytest.mark.parametrize(("text", "iso"), [
    ("DOB 02/03/1951", "1951-03-02"), ("D.O.B.: 2.3.1951", "1951-03-02"), ("dob 02-03-1951", "1951-03-02"),
    ("Date of birth 2 March 1951", "1951-03-02"), ("born 1951-03-02", "1951-03-02"),
    ("02/03/1951 (DOB)", "1951-03-02"), ("Born on 2nd Mar 1951", "1951-03-02"),
])
def test_dates_of_birth_with_cues(text: str, iso: str) -> None:
    """Common UK date layouts next to a birth cue are dates of birth, normalised to ISO."""
    assert [m.value for m in find_dobs(text)] == [iso]


@pytest.mark.parametrize("text", [
    "Meeting on 02/03/1951", "Invoice dated 2 March 2024", "DOB 31/02/1951", "DOB 02/03/2999",
])
def test_dates_without_cue_or_impossible_are_not_dobs(text: str) -> None:
    """Bare dates, impossible dates and future dates are not dates of birth."""
    assert find_dobs(text) == []


@pytest.mark.parametrize(("text", "value"), [
    ("LE1 5WW", "LE15WW"), ("sw1a 1aa", "SW1A1AA"), ("M1 1AE", "M11AE"), ("at (EC1A 1BB).", "EC1A1BB"),
])
def test_postcodes(text: str, value: str) -> None:
    """UK postcodes are found case-insensitively and normalised."""
    assert [m.value for m in find_postcodes(text)] == [value]


@pytest.mark.parametrize("text", ["LE15WWX", "ALE1 5WW", "M1 1AEB", "version 2.1 1st"])
def test_postcode_needs_word_bounds(text: str) -> None:
    """Postcode-like letters inside longer words are not postcodes."""
    assert find_postcodes(text) == []


def test_mask_shapes() -> None:
    """Masks keep only what a reviewer needs: first three and last two digits, the birth year."""
    assert mask(NHS, "943 476 5919") == "943 *** **19"
    assert mask("date_of_birth", "1951-03-02") == "**/**/1951"
    assert mask("postcode", "LE15WW") == "LE1 ***"
    assert mask("pattern:x", "RX1234567") == "RX*****67"


def test_mask_text_hides_identifiers_and_dobs() -> None:
    """mask_text replaces every valid identifier and date of birth, leaving other text alone."""
    text = f"NHS {NHS_NO}, order 1234567890, DOB 02/03/1951, CHI {CHI_NO}"
    masked = mask_text(text)
    chi = f"{CHI_NO[:3]} *** **{CHI_NO[8:]}"
    assert masked == f"NHS 436 *** **45, order 1234567890, DOB **/**/1951, CHI {chi}"


@given(st.integers(min_value=400_000_000, max_value=499_999_999), st.sampled_from(["", " ", "-"]))
def test_every_valid_number_is_found_and_masked(nine: int, sep: str) -> None:
    """Any valid NHS number in any accepted layout is found, and mask_text leaves no trace of it."""
    number = with_check(str(nine))
    if number is None:
        return
    written = sep.join((number[:3], number[3:6], number[6:]))
    assert [m.value for m in find_ids(f"Patient {written} seen")] == [number]
    assert number[3:8] not in mask_text(f"Patient {written} seen").replace(" ", "")


@given(st.text(alphabet="0123456789 -.,/abcNHS\n", max_size=200))
def test_detectors_never_crash_and_only_report_valid_numbers(text: str) -> None:
    """On arbitrary digit soup every reported identifier passes modulus 11."""
    for m in find_all(text):
        if m.kind in (NHS, CHI, HC):
            assert mod11_ok(m.value)
