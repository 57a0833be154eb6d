"""Admin-defined patterns and term lists: validation, matching, and the timeout on bad patterns."""

from __future__ import annotations

import time

import pytest

from relayguard.config import ScanSettings
from relayguard.detect import CustomDetectors, CustomPattern, TermList, scan_message
from tests.extract.builders import message, reasons


def _scan(body: str, custom: CustomDetectors, **limits: float) -> list:  # type: ignore[type-arg]
    return scan_message(message(body), limits=ScanSettings(**limits), custom=custom)


def test_bad_regex_is_rejected_with_its_name() -> None:
    """An invalid regular expression fails at construction with a message naming the pattern."""
    with pytest.raises(ValueError, match="custom pattern 'mrn': invalid regular expression"):
        CustomPattern("mrn", "RX(\\d+")


def test_pattern_matching_empty_string_is_rejected() -> None:
    """A pattern that matches the empty string would match everywhere, so it is refused."""
    with pytest.raises(ValueError, match="matches the empty string"):
        CustomPattern("any", "\\d*")


def test_empty_term_list_and_duplicate_names_are_rejected() -> None:
    """A term list needs terms, and two detectors may not share a name."""
    with pytest.raises(ValueError, match="has no terms"):
        TermList("hiv", [" "])
    with pytest.raises(ValueError, match="defined twice"):
        CustomDetectors(patterns=[CustomPattern("a", "x"), CustomPattern("a", "y")])  # type: ignore[arg-type]


def test_detectors_are_frozen_and_hashable() -> None:
    """Policy objects are immutable values, so they can be cached and compared."""
    terms = TermList("sexual-health", ["HIV", "chlamydia"])
    same = TermList("sexual-health", ["HIV", "chlamydia"])
    assert hash(CustomDetectors(terms=(terms,))) == hash(CustomDetectors(terms=(same,)))
    with pytest.raises(AttributeError):
        terms.name = "x"  # type: ignore[misc]


def test_pattern_findings_are_masked_and_counted() -> None:
    """Custom pattern matches become pattern:<name> findings with distinct counts and masked samples."""
    custom = CustomDetectors(patterns=(CustomPattern("mrn", r"\bRX\d{7}\b", confident=False),))
    [finding] = [f for f in _scan("RX1234567 and RX7654321 and RX1234567", custom) if f.kind == "pattern:mrn"]
    assert (finding.count, finding.confident, finding.sample) == (2, False, "RX*****67")


def test_terms_match_whole_words_case_insensitively() -> None:
    """Terms match whole words in any case, multi-word terms across any spacing, not inside words."""
    custom = CustomDetectors(terms=(TermList("clinical", ["HIV", "heart failure"]),))
    findings = _scan("hiv test; Heart   failure; archive; HIVE", custom)
    [finding] = [f for f in findings if f.kind == "term:clinical"]
    assert finding.count == 2
    assert finding.sample == "hiv"


def test_catastrophic_pattern_times_out_as_unscannable() -> None:
    """A catastrophically backtracking pattern ends as unscannable within the budget, not a hang."""
    custom = CustomDetectors(patterns=(CustomPattern("evil", r"(a|aa)+$"),))
    started = time.monotonic()
    findings = _scan("a" * 40 + "b", custom, time_budget=1.0)
    assert time.monotonic() - started < 5
    assert "custom pattern evil timed out" in reasons(findings)
