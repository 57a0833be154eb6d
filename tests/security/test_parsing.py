"""Hostile messages and policy files: nothing crashes, nothing unread passes, nothing is injected."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard import rewrite
from relayguard.config import ScanSettings
from relayguard.decision import Action, Decision, Envelope, Rewrite, Submitter, SubmitterKind
from relayguard.detect import custom
from relayguard.message import parse_message, split_header_block
from relayguard.policy import engine
from relayguard.policy.loader import PolicyFileError, load_policy, parse_policy
from tests.security.fuzz_parse import NHS_NUMBER, default_policy

LIMITS = ScanSettings()
SENDER = Submitter("reception@oakfield-surgery.nhs.uk", SubmitterKind.USER, "127.0.0.1")
OUTSIDE = Envelope("reception@oakfield-surgery.nhs.uk", ("patient@gmail.com",))
HEAD = b"From: reception@oakfield-surgery.nhs.uk\r\nTo: patient@gmail.com\r\nSubject: results\r\n"


def decide(raw: bytes, envelope: Envelope = OUTSIDE) -> Decision:
    return engine.decide(raw, envelope, SENDER, default_policy(), limits=LIMITS)


def multipart(boundary: bytes, body: bytes) -> bytes:
    ctype = b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n"
    return HEAD + b"MIME-Version: 1.0\r\n" + ctype + body


def nested(depth: int) -> bytes:
    inner = b"Content-Type: text/plain\r\n\r\nNHS " + NHS_NUMBER + b"\r\n"
    for i in range(depth):
        b = b"b%d" % i
        inner = (b"Content-Type: multipart/mixed; boundary=\"" + b + b"\"\r\n\r\n--" + b + b"\r\n" + inner
                 + b"\r\n--" + b + b"--\r\n")
    return HEAD + b"MIME-Version: 1.0\r\n" + inner


MALFORMED = {
    "missing boundary": HEAD + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nNHS " + NHS_NUMBER
    + b"\r\n",
    "unclosed boundary": multipart(b"B", b"--B\r\nContent-Type: text/plain\r\n\r\nNHS " + NHS_NUMBER
                                   + b"\r\n"),
    "bad base64": multipart(b"B", b"--B\r\nContent-Type: text/csv; name=a.csv\r\nContent-Transfer-Encoding: "
                            b"base64\r\n\r\n!!!NDM2*IDYxNCAxMzQ1===\x00\r\n--B--\r\n"),
    "unknown charset": HEAD + b"Content-Type: text/plain; charset=x-klingon-8\r\n\r\nNHS " + NHS_NUMBER
    + b"\r\n",
    "1000-deep nesting": nested(1000),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_mime_never_crashes_and_never_passes(raw: bytes) -> None:
    """Each broken structure hiding an NHS number is decided without raising, and the number is either
    found by the detectors (the content was scanned) or the message is unscannable and held."""
    decision = decide(raw)
    kinds = {f.kind for f in decision.findings}
    assert "nhs_number" in kinds or ("unscannable" in kinds and decision.action is Action.HOLD), \
        decision.to_json()


def test_deep_nesting_is_unscannable_past_the_depth_cap() -> None:
    """MIME nested deeper than scan.max_depth (Postfix's mime_nesting_limit) is an unscannable finding."""
    kinds = {f.kind for f in decide(nested(30)).findings}
    assert "unscannable" in kinds


@pytest.mark.slow
def test_two_hundred_thousand_empty_parts_are_bounded() -> None:
    """200,000 empty MIME parts are decided within the time budget and held as unscannable."""
    raw = multipart(b"B", b"--B\r\n\r\n" * 200_000 + b"--B--\r\n")
    started = time.monotonic()
    decision = decide(raw)
    assert time.monotonic() - started < LIMITS.time_budget + 10
    assert decision.action is Action.HOLD and "unscannable" in {f.kind for f in decision.findings}


RECIPIENT_TRICKS = {
    "duplicate Cc": (b"Cc: a@nhs.net\r\nCc: bob@gmail.com\r\n", "bob@gmail.com"),
    "group syntax": (b"To: friends: bob@gmail.com, c@nhs.net;\r\n", "bob@gmail.com"),
    "Resent-To": (b"Resent-To: bob@gmail.com\r\n", "bob@gmail.com"),
    "Resent-Cc": (b"Resent-Cc: bob@gmail.com\r\n", "bob@gmail.com"),
    "stray Bcc": (b"Bcc: bob@gmail.com\r\n", "bob@gmail.com"),
    "encoded word in address": (b"Cc: =?utf-8?q?a=40b?=c@host.com\r\n", "=?utf-8?q?a=40b?=c@host.com"),
    "CVE-2023-27043": (b"Cc: alice@example.org)<bob@gmail.com>\r\n", "bob@gmail.com"),
    "obsolete CC : x@y": (b"CC : bob@gmail.com\r\n", "bob@gmail.com"),
    "folded": (b"Cc: a@nhs.net,\r\n bob@gmail.com\r\n", "bob@gmail.com"),
}


@pytest.mark.parametrize(("extra", "hidden"), RECIPIENT_TRICKS.values(), ids=RECIPIENT_TRICKS.keys())
def test_recipients_a_naive_parser_misses_count_or_hold(extra: bytes, hidden: str) -> None:
    """The recipient a naive parser would miss is counted as visible, or the message is held."""
    raw = HEAD.replace(b"To: patient@gmail.com\r\n", b"To: ward@nhs.net\r\n") + extra + b"\r\nHello\r\n"
    parsed = parse_message(raw, LIMITS)
    decision = decide(raw, Envelope(OUTSIDE.mail_from, ("ward@nhs.net", "x@gmail.com")))
    assert hidden in parsed.visible_addresses() or decision.action is Action.HOLD


@pytest.mark.parametrize("value", [b"alice@example.org)<bob@gmail.com>", b"<<a@b.com>>",
                                   b"a@b.com\rBcc: c@d.com",
                                   b"\"unterminated <x@y.com>", b"a@@b.com"])
def test_any_address_header_defect_holds(value: bytes) -> None:
    """An address header that does not parse cleanly is an address_defect and the message is held."""
    decision = decide(HEAD + b"Cc: " + value + b"\r\n\r\nHello\r\n")
    assert "address_defect" in {f.kind for f in decision.findings}
    assert decision.action is Action.HOLD


def test_stray_bcc_is_removed_before_forwarding() -> None:
    """A Bcc header left in by the client is not in what the upstream receives, even on plain deliver."""
    raw = HEAD + b"Bcc: hidden@nhs.net\r\nResent-Bcc: other@nhs.net\r\n\r\nHello\r\n"
    [(env, out)] = rewrite.apply(raw, Decision(), OUTSIDE)
    names = [f.lname for f in split_header_block(out).fields]
    assert "bcc" not in names and "resent-bcc" not in names and b"hidden@nhs.net" not in out
    assert env == OUTSIDE and out.endswith(b"\r\n\r\nHello\r\n")


INJECTED = b"Subject: =?utf-8?q?hello=0D=0ABcc:_attacker@evil.example?=\r\n"


@pytest.mark.parametrize("decision", [Decision(rewrite=Rewrite.BCC), Decision(rewrite=Rewrite.INDIVIDUAL),
                                      Decision(tag_subject=("[secure]",))], ids=["bcc", "individual", "tag"])
def test_encoded_crlf_in_subject_never_becomes_a_header_after_any_rewrite(decision: Decision) -> None:
    """After every rewrite the encoded CR/LF stays encoded: no Bcc line, no new field name (CVE-2024-6923)."""
    raw = b"From: a@oakfield-surgery.nhs.uk\r\nTo: patient@gmail.com\r\n" + INJECTED + b"\r\nHi\r\n"
    for _, out in rewrite.apply(raw, decision, OUTSIDE):
        names = {f.lname for f in split_header_block(out).fields}
        assert "bcc" not in names and b"\nBcc:" not in out
        assert names <= {"from", "to", "subject", "x-relayguard-rewrite"}


def test_rewrite_verification_refuses_an_injected_header() -> None:
    """The verifier rejects an output block that gained a field (a rewrite that went wrong)."""
    raw = b"From: a@oakfield-surgery.nhs.uk\r\nTo: patient@gmail.com\r\nSubject: x\r\n\r\nHi\r\n"
    original = split_header_block(raw)
    forged = raw.replace(b"Subject: x\r\n", b"Subject: x\r\nBcc: attacker@evil.example\r\n")
    with pytest.raises(rewrite.RewriteError):
        rewrite.verify(forged, original, recipient=None, hidden=False, expected_fields=4)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([b"Bcc", b"Resent-Bcc", b"Cc", b"To", b"Subject", b"X-A"]), max_size=8),
       st.sampled_from([b"a@gmail.com", b"b@nhs.net, c@hotmail.com", b"undisclosed-recipients:;"]))
def test_no_copy_ever_carries_a_bcc_field(names: list[bytes], value: bytes) -> None:
    """Property: for any header set and any decision, no copy sent upstream has a Bcc or Resent-Bcc field."""
    raw = b"".join(n + b": " + value + b"\r\n" for n in names) + b"\r\nbody\r\n"
    for decision in (Decision(), Decision(rewrite=Rewrite.BCC), Decision(rewrite=Rewrite.INDIVIDUAL)):
        for env, out in rewrite.apply(raw, decision, OUTSIDE):
            assert not {f.lname for f in split_header_block(out).fields} & {"bcc", "resent-bcc"}
            assert set(env.rcpt_tos) <= set(OUTSIDE.rcpt_tos)


# --- policy files ----------------------------------------------------------------------------

POLICY_HEAD = (b"version: 1\nrules:\n  - name: r\n    when: {submitter: {kind: network}}\n"
               b"    then: {action: hold}\n")


def test_policy_yaml_cannot_build_python_objects(tmp_path: Path) -> None:
    """A ``!!python/object`` tag is refused by the safe loader; the command it names never runs."""
    marker = tmp_path / "pwned"
    text = POLICY_HEAD + f"x: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    with pytest.raises(PolicyFileError):
        parse_policy(text, "evil.yaml")
    assert not marker.exists()


def test_invalid_admin_regex_is_refused_at_load() -> None:
    """A custom pattern that does not compile is refused when the policy loads, naming the pattern."""
    text = POLICY_HEAD + b"patterns:\n  bad: {regex: \"([a-z\"}\n"
    with pytest.raises(PolicyFileError, match="bad"):
        parse_policy(text, "p.yaml")


@pytest.mark.slow
def test_catastrophic_admin_regex_is_time_bounded(tmp_path: Path) -> None:
    """A backtracking-bomb pattern over hostile text is stopped and holds the message as unscannable.

    The ``regex`` package checks its timeout coarsely: a 2 s PATTERN_TIMEOUT measured ~8-10 s here
    (see docs/SECURITY.md), hence the loose bound; decide() runs off the event loop meanwhile."""
    path = tmp_path / "p.yaml"
    base = (Path(__file__).resolve().parents[2] / "policies" / "default.yaml").read_text()
    path.write_text(base + "\npatterns:\n  bomb: {regex: \"^(a+)+$\"}\n")
    policy = load_policy(path)
    raw = HEAD + b"\r\n" + b"a" * 40_000 + b"b\r\n"
    started = time.monotonic()
    decision = engine.decide(raw, OUTSIDE, SENDER, policy, limits=ScanSettings(time_budget=3.0))
    assert time.monotonic() - started < 8 * custom.PATTERN_TIMEOUT
    assert decision.action is Action.HOLD and "unscannable" in {f.kind for f in decision.findings}


def test_catastrophic_header_regex_counts_as_a_match(tmp_path: Path) -> None:
    """A header condition regex that runs out of time counts as a match (stricter), quickly."""
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n  - name: urgent\n    when:\n      headers: [{name: Subject, "
                    "regex: \"^(a|aa)+$\"}]\n    then: {action: hold}\n")
    policy = load_policy(path)
    raw = (b"From: a@oakfield-surgery.nhs.uk\r\nTo: w@nhs.net\r\nSubject: " + b"a" * 5000
           + b"b\r\n\r\nx\r\n")
    started = time.monotonic()
    decision = engine.decide(raw, Envelope("a@oakfield-surgery.nhs.uk", ("w@nhs.net",)), SENDER, policy,
                             limits=LIMITS)
    assert time.monotonic() - started < 3
    assert decision.action is Action.HOLD and decision.rules == ("urgent",)
