"""The scan_message seam: finding shape, digests, counting rules, places, nesting and budgets."""

from __future__ import annotations

import hashlib
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from relayguard.config import ScanSettings
from relayguard.detect import scan_message
from tests.extract.builders import NHS, confident, message, parse, reasons, scan, valid_numbers


def test_digest_is_keyed_blake2b_of_the_normalised_value() -> None:
    """Digests are blake2b(salt + digits), the same whatever layout the number was written in."""
    findings = scan_message(message("NHS 436-614-1345"), limits=ScanSettings(), salt=b"pepper")
    [nhs] = confident(findings)
    assert nhs.digests == {hashlib.blake2b(b"pepper" + NHS.encode(), digest_size=16).hexdigest()}


def test_one_finding_per_kind_place_and_confidence_with_distinct_count() -> None:
    """Repeats of one number count once; weak and confident values at one place are separate findings."""
    weak = valid_numbers("611", 1)[0]
    findings = scan(message(f"NHS no {NHS}\nNHS no {NHS}\n{'x' * 80}\nref {weak}"))
    nhs = sorted((f.confident, f.count, f.where) for f in findings if f.kind == "nhs_number")
    assert nhs == [(False, 1, "body"), (True, 1, "body")]


def test_three_distinct_valid_numbers_support_each_other() -> None:
    """Three or more distinct valid numbers of a kind in one place are confident without cues."""
    numbers = valid_numbers("612", 3)
    [finding] = [f for f in scan(message("\n\n".join(numbers))) if f.kind == "nhs_number"]
    assert (finding.count, finding.confident) == (3, True)


def test_two_unsupported_numbers_stay_weak() -> None:
    """Two valid numbers without any support remain weak."""
    findings = scan(message(" and ".join(valid_numbers("613", 2))))
    assert confident(findings) == []
    assert [f.count for f in findings if f.kind == "nhs_number"] == [2]


def test_subject_and_filenames_are_scanned_and_masked_in_places() -> None:
    """Identifiers in the subject or a filename are found, and never appear raw in any place."""
    msg = message("hello", subject=f"NHS {NHS}", attachments=((f"NHS {NHS}.txt", "text/plain", b"x"),))
    findings = scan(msg)
    assert {f.where for f in confident(findings)} == {"subject", "attachment:NHS 436 *** **45.txt"}
    assert NHS not in repr([f.public() for f in findings])


def test_inline_html_alternative_is_the_same_body() -> None:
    """A plain and an HTML alternative are one body: the number counts once, in 'body'."""
    findings = scan(message(f"NHS {NHS}", html=f"<p>NHS&nbsp;<b>{NHS}</b></p>"))
    assert [(f.where, f.count) for f in confident(findings)] == [("body", 1)]


def test_unknown_charset_is_decoded_with_replacement() -> None:
    """A body in an unknown charset is still scanned rather than crashing or passing."""
    raw = (b"From: a@b\r\nSubject: x\r\nContent-Type: text/plain; charset=x-unknown-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\nNHS number \xff\xfe 4366141345\r\n")
    assert confident(scan(parse(raw)))


def test_quoted_printable_soft_break_inside_a_number_is_joined() -> None:
    """A quoted-printable soft line break inside a number is decoded before detection."""
    raw = (b"From: a@b\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\nNHS number 43661=\r\n41345\r\n")
    assert [f.count for f in confident(scan(parse(raw)))] == [1]


def _deep(depth: int) -> MIMEMultipart:
    top = MIMEMultipart("mixed")
    node = top
    for _ in range(depth):
        child = MIMEMultipart("mixed")
        node.attach(child)
        node = child
    node.attach(MIMEText(f"NHS {NHS}"))
    return top


def test_thousand_deep_nesting_is_unscannable_not_a_recursion_error() -> None:
    """A 1,000-deep MIME tree ends as 'nesting too deep' without RecursionError."""
    findings = scan(_deep(1000))
    assert "nesting too deep" in reasons(findings)


def test_nesting_within_the_limit_is_scanned() -> None:
    """A few levels of multipart nesting are walked and the body found."""
    assert confident(scan(_deep(3)))


def test_too_many_parts_is_unscannable() -> None:
    """A message with more MIME parts than allowed ends as unscannable."""
    top = MIMEMultipart("mixed")
    for _ in range(30):
        top.attach(MIMEText("hi"))
    assert "too many MIME parts" in reasons(scan(top, max_mime_parts=10))


def test_time_budget_exceeded_stops_the_scan() -> None:
    """A scan over its time budget ends with an unscannable 'time budget exceeded' finding."""
    big = ("lorem ipsum 0118 496 0000 LE1 5WW\n" * 200_000)
    assert "time budget exceeded" in reasons(scan(message(big), time_budget=0.001))


def test_part_over_size_limit_is_unscannable() -> None:
    """An attachment over max_part_bytes is not decoded but reported unscannable."""
    msg = message("x", attachments=(("big.csv", "text/csv", b"a,b\n" * 5000),))
    assert "part over size limit" in reasons(scan(msg, max_part_bytes=1000))
