"""CC→BCC and individual rewriting at the bytes level, verified after every rewrite."""

from __future__ import annotations

import pytest

from relayguard.decision import Decision, Envelope, Rewrite
from relayguard.message import split_header_block
from relayguard.rewrite import RewriteError, apply, verify

SENDER = "reception@oakfield-surgery.nhs.uk"
BCC = Decision(rewrite=Rewrite.BCC, rules=("many-external-recipients",))
INDIVIDUAL = Decision(rewrite=Rewrite.INDIVIDUAL, rules=("one-by-one",))


def msg(*headers: str, body: bytes = b"Body line.\r\n") -> bytes:
    return ("\r\n".join([f"From: <{SENDER}>", *headers, "Subject: Invite"]) + "\r\n\r\n").encode() + body


def head(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def fields(raw: bytes) -> list[tuple[str, str]]:
    return [(f.name, f.value) for f in split_header_block(raw).fields]


def test_bcc_replaces_every_recipient_list_and_keeps_envelope_and_body() -> None:
    """Several To/Cc, Resent-*, Bcc headers all go; one undisclosed To and a trace header remain."""
    raw = msg("To: a@x.org", "Cc: b@gmail.com,\r\n c@gmail.com", "Cc: d@yahoo.com", "Bcc: e@aol.com",
              "Resent-To: f@x.org", "Resent-Cc: g@x.org", "CC : h@sky.com")
    env = Envelope(SENDER, ("a@x.org", "b@gmail.com", "z@hidden.org"))
    [(got_env, out)] = apply(raw, BCC, env)
    assert got_env == env
    assert fields(out) == [("X-Relayguard-Rewrite", "bcc; rule=many-external-recipients"),
                           ("From", f"<{SENDER}>"), ("To", "undisclosed-recipients:;"), ("Subject", "Invite")]
    assert out.endswith(b"\r\n\r\nBody line.\r\n")


@pytest.mark.parametrize("value", [
    "Board: =?utf-8?q?J=C3=B6rg?= <jorg@EXAMPLE.org>, b@Bücher.de;",
    '"x@evil.com" <a@x.org>, <<broken',
    "undisclosed-recipients:;",
])
def test_bcc_handles_groups_encoded_names_idn_and_malformed(value: str) -> None:
    """Group syntax, encoded names, IDN and malformed lists are removed all the same."""
    [(_, out)] = apply(msg(f"To: {value}", f"Cc: {value}"), BCC, Envelope(SENDER, ("a@x.org",)))
    assert [n for n, _ in fields(out) if n.lower() in ("to", "cc")] == ["To"]
    assert b"x.org" not in head(out).lower()
    assert b"example.org" not in head(out).lower()


def test_encoded_subject_with_crlf_bcc_is_not_turned_into_a_header() -> None:
    """An encoded ``=0D=0ABcc:`` in the subject stays encoded: no Bcc line appears (CVE-2024-6923)."""
    subject = "Subject: =?utf-8?q?hi=0D=0ABcc:_victim@example.com?="
    raw = f"From: <{SENDER}>\r\nTo: a@x.org, b@y.org\r\n{subject}\r\n\r\nbody\r\n".encode()
    [(_, out)] = apply(raw, Decision(rewrite=Rewrite.BCC, tag_subject=("[secure]",)),
                       Envelope(SENDER, ("a@x.org",)))
    assert [n for n, _ in fields(out)] == ["X-Relayguard-Rewrite", "From", "To", "Subject"]
    assert b"\r\nBcc:" not in out
    assert fields(out)[3] == ("Subject", "[secure] =?utf-8?q?hi=0D=0ABcc:_victim@example.com?=")


def test_bare_cr_field_is_dropped_rather_than_passed_on() -> None:
    """A field carrying a bare CR (which an upstream may split into two lines) is not forwarded."""
    raw = b"From: <a@x.org>\r\nTo: b@y.org\r\nX-Note: hi\rBcc: c@z.org\r\n\r\nbody\r\n"
    [(_, out)] = apply(raw, BCC, Envelope("a@x.org", ("b@y.org",)))
    assert b"c@z.org" not in out
    assert b"X-Note" not in out


def test_individual_sends_each_visible_recipient_its_own_copy() -> None:
    """One copy per visible envelope recipient addressed to them alone, one more for BCC ones."""
    raw = msg("To: A <a@X.org>", "Cc: b@gmail.com, c@gmail.com")
    env = Envelope(SENDER, ("A@x.org", "b@gmail.com", "hidden@aol.com", "second@aol.com"))
    copies = apply(raw, INDIVIDUAL, env)
    assert [e.rcpt_tos for e, _ in copies] == [
        ("A@x.org",), ("b@gmail.com",), ("hidden@aol.com", "second@aol.com")]
    assert [dict(fields(b))["To"] for _, b in copies] == [
        "<A@x.org>", "<b@gmail.com>", "undisclosed-recipients:;"]
    for e, b in copies:
        others = {"a@x.org", "b@gmail.com", "c@gmail.com", "hidden@aol.com", "second@aol.com"} - {
            r.lower() for r in e.rcpt_tos}
        assert not any(o.encode() in head(b).lower() for o in others)


def test_visible_recipient_missing_from_envelope_gets_no_copy() -> None:
    """The envelope decides who receives mail: c@gmail.com, only in Cc, gets nothing."""
    copies = apply(msg("To: a@x.org", "Cc: c@gmail.com"), INDIVIDUAL, Envelope(SENDER, ("a@x.org",)))
    assert [e.rcpt_tos for e, _ in copies] == [("a@x.org",)]


def test_tag_subject_is_added_once_and_nothing_else_changes() -> None:
    """A tag prefixes the subject once; the recipients stay when there is no rewrite."""
    raw = msg("To: a@x.org")
    decision = Decision(tag_subject=("[secure]",))
    [(_, out)] = apply(raw, decision, Envelope(SENDER, ("a@x.org",)))
    assert dict(fields(out))["Subject"] == "[secure] Invite"
    assert out.replace(b"[secure] ", b"") == raw
    [(_, twice)] = apply(out, decision, Envelope(SENDER, ("a@x.org",)))
    assert twice == out


def test_missing_subject_is_added_with_the_tag() -> None:
    """A message without a Subject gets one carrying the tag."""
    raw = f"From: <{SENDER}>\nTo: a@x.org\n\nbody\n".encode()
    [(_, out)] = apply(raw, Decision(tag_subject=("[secure]",)), Envelope(SENDER, ("a@x.org",)))
    assert out == f"From: <{SENDER}>\nTo: a@x.org\nSubject: [secure]\n\nbody\n".encode()


def test_deliver_without_rewrite_returns_the_bytes_untouched() -> None:
    """No rewrite and no tag: the same bytes and envelope come back."""
    raw = msg("To: a@x.org", "Cc: b@y.org")
    env = Envelope(SENDER, ("a@x.org",))
    assert apply(raw, Decision(), env) == [(env, raw)]


def test_incoming_trace_header_is_replaced_not_trusted() -> None:
    """A client-supplied X-Relayguard-Rewrite header is removed; only ours remains."""
    raw = msg("X-Relayguard-Rewrite: bcc; rule=forged", "To: a@x.org, b@y.org")
    [(_, out)] = apply(raw, BCC, Envelope(SENDER, ("a@x.org",)))
    traces = [v for n, v in fields(out) if n == "X-Relayguard-Rewrite"]
    assert traces == ["bcc; rule=many-external-recipients"]


def test_bad_tag_from_stored_decision_is_refused() -> None:
    """A tag with a CR/LF (from a tampered stored decision) raises instead of injecting a header."""
    with pytest.raises(RewriteError):
        apply(msg("To: a@x.org"), Decision(tag_subject=("[x]\r\nBcc: v@evil.com",)), Envelope(SENDER, ()))


def test_verify_rejects_a_new_header_and_a_surviving_cc() -> None:
    """Verification refuses a block with a field the original lacked, or a Cc left behind."""
    original = split_header_block(msg("To: a@x.org"))
    forged = b"From: x\r\nTo: undisclosed-recipients:;\r\nBcc: v@evil.com\r\n" + original.body
    with pytest.raises(RewriteError, match="add a header field 'Bcc'"):
        verify(forged, original, recipient=None, hidden=True, expected_fields=3)
    original = split_header_block(msg("To: a@x.org", "Cc: b@y.org"))
    kept = b"To: undisclosed-recipients:;\r\nCc: b@y.org\r\n" + original.body
    with pytest.raises(RewriteError, match="exactly one To"):
        verify(kept, original, recipient=None, hidden=True, expected_fields=2)


@pytest.mark.parametrize(("raw", "blind"), [
    (msg("To: a@x.org"), False),
    (msg("To: a@x.org", "Bcc: e@aol.com"), True),
    (msg("To: a@x.org", "bcc : e@aol.com"), True),  # obsolete white space before the colon
    (msg("To: a@x.org", "RESENT-BCC: e@aol.com"), True),
    (msg("To: a@x.org", "X-Bcc: e@aol.com"), False),
    (msg("To: a@x.org,\r\n Bcc: e@aol.com"), False),  # a continuation line, not a field
    (msg("To: a@x.org", body=b"Bcc: e@aol.com\r\n"), False),  # in the body
    (b"Bcc: e@aol.com\r\nTo: a@x.org\r\n\r\nHi\r\n", True),  # the first field
    (b"To: a@x.org\nBcc: e@aol.com\n\nHi\n", True),  # bare LF line ends
])
def test_a_message_without_blind_fields_is_passed_on_untouched(raw: bytes, blind: bool) -> None:
    """Without a rewrite or a tag, a message is sent as it came unless it has a Bcc or Resent-Bcc
    field (found without splitting the header block: the same fields the split finds)."""
    assert any(f.lname in ("bcc", "resent-bcc") for f in split_header_block(raw).fields) is blind
    [(env, out)] = apply(raw, Decision(), Envelope(SENDER, ("a@x.org",)))
    assert env == Envelope(SENDER, ("a@x.org",))
    assert (out is raw) is not blind
    assert not any(f.lname in ("bcc", "resent-bcc") for f in split_header_block(out).fields)
