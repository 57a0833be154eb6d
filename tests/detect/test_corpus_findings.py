"""The shared sample corpus: each case's expected finding kinds, and nothing confident in clean mail."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
import yaml

from relayguard.config import ScanSettings
from relayguard.decision import Finding
from relayguard.detect import scan_message

_REPO = Path(__file__).parents[2]
_CANDIDATES = (_REPO / "tests" / "corpus", _REPO.parent / "shared" / "corpus")
CORPUS = next((d for d in _CANDIDATES if (d / "expected.yaml").is_file()), None)

pytestmark = pytest.mark.skipif(
    CORPUS is None, reason="sample corpus not found in tests/corpus or ../shared/corpus")

CLEAN_CASES = ("plain-ok", "invalid-checksums-ok")


def _expected() -> dict[str, dict[str, object]]:
    if CORPUS is None:
        return {}
    return yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))


def _scan(case: str) -> list[Finding]:
    assert CORPUS is not None
    msg = email.message_from_bytes((CORPUS / f"{case}.eml").read_bytes(), policy=email.policy.compat32)
    return scan_message(msg, limits=ScanSettings())


def _cases_with_findings() -> list[tuple[str, list[str]]]:
    return [(case, list(spec["findings"])) for case, spec in _expected().items()  # type: ignore[call-overload]
            if spec.get("findings")]


@pytest.mark.parametrize(("case", "kinds"), _cases_with_findings())
def test_expected_kinds_are_found_confidently(case: str, kinds: list[str]) -> None:
    """Every finding kind the corpus expects for a case is reported, and confidently."""
    confident = {f.kind for f in _scan(case) if f.confident}
    assert set(kinds) <= confident


@pytest.mark.parametrize("case", CLEAN_CASES)
def test_clean_mail_has_no_confident_findings(case: str) -> None:
    """Plain mail and order references that fail modulus 11 produce nothing confident."""
    assert [f.public() for f in _scan(case) if f.confident] == []


def test_referral_has_one_confident_nhs_number_and_a_dob() -> None:
    """The referral letter yields exactly one confident NHS number, masked, and its date of birth."""
    findings = {f.kind: f for f in _scan("referral-1-nhs-to-nhsnet")}
    nhs = findings["nhs_number"]
    assert (nhs.count, nhs.confident, nhs.where, nhs.sample) == (1, True, "body", "722 *** **48")
    assert findings["date_of_birth"].confident


def test_no_raw_identifier_in_any_finding() -> None:
    """No public field of any corpus finding contains an unmasked ten-digit identifier."""
    raw = {"4366141345", "7228367448", "722 836 7448", "6943144901", "641-603-6800"}
    for case in _expected():
        for finding in _scan(case):
            text = repr(finding.public())
            assert not any(r in text for r in raw), case


def test_board_papers_point_at_the_sheet_and_cell() -> None:
    """The board-papers workbook names the sheet and the first cell holding an NHS number."""
    nhs = next(f for f in _scan("board-papers-xlsx-92") if f.kind == "nhs_number")
    assert nhs.where.startswith("attachment:ooh-usage.xlsx/")
    assert "!" in nhs.where
    assert nhs.count == 92
