"""The parsed view of a message: visible recipients, defects, attachments."""

from __future__ import annotations

import email
import email.feedparser
import email.parser
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.config import ScanSettings
from relayguard.decision import Envelope
from relayguard.message import (
    feed_parse,
    filename_of,
    header_end,
    hidden_recipients,
    parse_message,
    split_header_block,
)

from .conftest import eml

LIMITS = ScanSettings()


def visible(raw: bytes) -> list[str]:
    return [r.address for r in parse_message(raw, LIMITS).visible]


def test_every_duplicate_cc_header_counts() -> None:
    """Recipients in a second and third Cc header are counted, not just the first."""
    raw = eml("To: a@x.org", "Cc: b@y.org", "Cc: c@z.org", "CC: d@w.org")
    assert visible(raw) == ["a@x.org", "b@y.org", "c@z.org", "d@w.org"]


def test_resent_and_folded_headers_count() -> None:
    """Resent-To/Resent-Cc are visible recipients and folded lists are read whole."""
    raw = eml("To: a@x.org,\r\n\tb@x.org", "Resent-To: r@y.org", "Resent-Cc: s@y.org")
    assert visible(raw) == ["a@x.org", "b@x.org", "r@y.org", "s@y.org"]


def test_group_syntax_yields_members_and_undisclosed_yields_none() -> None:
    """A named group contributes its members; ``undisclosed-recipients:;`` contributes nobody."""
    raw = eml("To: Board: one@x.org, Two <two@y.org>;, three@z.org", "Cc: undisclosed-recipients:;")
    assert visible(raw) == ["one@x.org", "two@y.org", "three@z.org"]
    assert parse_message(raw, LIMITS).defects == ()


def test_encoded_display_names_and_case_and_idn_are_normalised() -> None:
    """RFC 2047 names parse, domains are lower-cased and IDN domains compared in punycode."""
    raw = eml("To: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <Jorg@EXAMPLE.ORG>", "Cc: hans@Bücher.DE")
    assert visible(raw) == ["jorg@example.org", "hans@xn--bcher-kva.de"]


def test_obsolete_space_before_colon_counts_and_keeps_mime() -> None:
    """``CC : x@y`` is a Cc header (obsolete syntax), and the fields after it still parse."""
    raw = eml("CC : hidden@gmail.com", "Content-Type: text/html", body="<p>hi</p>\r\n")
    parsed = parse_message(raw, LIMITS)
    assert [r.address for r in parsed.visible] == ["hidden@gmail.com"]
    assert parsed.msg is not None
    assert parsed.msg.get_content_type() == "text/html"


@pytest.mark.parametrize("value", ["foo", "a@b.org, <<broken", "x@", "a@b.org (c) d@e.org", "a@exa mple.org"])
def test_malformed_address_header_is_a_defect_and_an_external_recipient(value: str) -> None:
    """An address list that does not parse becomes an address_defect and a domain-less recipient."""
    parsed = parse_message(eml(f"To: {value}"), LIMITS)
    assert [f.kind for f in parsed.defects] == ["address_defect"]
    assert any(r.malformed for r in parsed.visible)


def test_bare_cr_in_address_header_is_a_defect() -> None:
    """A bare CR inside a Cc field (a smuggling attempt) is an address defect."""
    raw = b"From: a@x.org\r\nCc: b@y.org\rBcc: c@z.org\r\n\r\nbody\r\n"
    assert [f.kind for f in parse_message(raw, LIMITS).defects] == ["address_defect"]


def test_junk_line_in_header_block_is_a_header_defect() -> None:
    """A line that is neither a field nor a continuation is reported, not silently skipped."""
    raw = b"From: a@x.org\r\nthis is not a header\r\nTo: b@y.org\r\n\r\nbody\r\n"
    parsed = parse_message(raw, LIMITS)
    assert [f.kind for f in parsed.defects] == ["header_defect"]
    assert [r.address for r in parsed.visible] == ["b@y.org"]


def test_parser_crash_becomes_unscannable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A RecursionError inside the stdlib parser yields an unscannable finding, not an exception."""
    def explode(*args: object, **kwargs: object) -> None:
        raise RecursionError("deep")
    # Both parsers (the stdlib's and mimesplit) store every header field through set_raw.
    monkeypatch.setattr(email.message.Message, "set_raw", explode)
    parsed = parse_message(eml("To: a@x.org"), LIMITS)
    assert parsed.msg is None
    assert [f.kind for f in parsed.defects] == ["unscannable"]


def test_hidden_recipients_are_envelope_only() -> None:
    """Envelope recipients not named in any visible header are the hidden (BCC) ones."""
    parsed = parse_message(eml("To: A <a@X.org>"), LIMITS)
    env = Envelope("s@x.org", ("a@x.org", "Secret@Gmail.com"))
    assert hidden_recipients(parsed, env) == ("Secret@Gmail.com",)


def test_subject_message_id_attachments_and_size() -> None:
    """Subject is decoded, and attachment names and types are listed."""
    raw = eml("Subject: =?utf-8?q?Caf=C3=A9?=", "Message-ID: <m1@x>", "MIME-Version: 1.0",
              'Content-Type: multipart/mixed; boundary="b"',
              body='--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/zip\r\n'
                   'Content-Disposition: attachment; filename="list.zip"\r\n\r\nPK\r\n--b--\r\n')
    parsed = parse_message(raw, LIMITS)
    assert parsed.subject == "Café"
    assert parsed.message_id == "<m1@x>"
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [("list.zip", "application/zip")]
    assert parsed.size == len(raw)


def test_header_block_ends_at_first_blank_line_and_keeps_body_bytes() -> None:
    """The split keeps the body byte for byte, blank line included, with LF-only input too."""
    raw = b"To: a@b.org\nSubject: x\n\nTo: not@header.org\n"
    block = split_header_block(raw)
    assert [f.name for f in block.fields] == ["To", "Subject"]
    assert block.body == b"\nTo: not@header.org\n"
    assert block.newline == b"\n"


_MULTIPART = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
              b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\npreamble\r\n--XYZ\r\n'
              b"Content-Type: text/plain\r\n\r\nline one\r\nline two\r\n--XYZ\r\n"
              b'Content-Type: text/csv; name="a.csv"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
              b"bmhzLDk0MzQ3NjU5MTkK\r\n--XYZ--\r\nepilogue\r\n")


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1024])
@pytest.mark.parametrize("raw", [_MULTIPART, _MULTIPART.replace(b"\r\n", b"\n"), b"Subject: x\r\n\r\nbody\r"])
def test_fed_in_pieces_the_parser_sees_what_it_sees_whole(raw: bytes, chunk: int) -> None:
    """Every piece boundary, CR|LF included, gives the stdlib's own result for the whole."""
    whole = email.message_from_bytes(raw, policy=email.policy.compat32)
    fed = feed_parse(raw, chunk)
    assert fed.as_bytes() == whole.as_bytes()
    assert [p.get_content_type() for p in fed.walk()] == [p.get_content_type() for p in whole.walk()]
    assert [p.get_payload(decode=True) for p in fed.walk() if not p.is_multipart()] == \
        [p.get_payload(decode=True) for p in whole.walk() if not p.is_multipart()]
    assert fed.preamble == whole.preamble and fed.epilogue == whole.epilogue


@pytest.mark.parametrize("headers", [
    "Content-Type: text/plain\r\n",
    "Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: inline\r\n",
    "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"a b.pdf\"\r\n",
    "Content-Type: application/pdf; NAME=\"upper.pdf\"\r\n",
    "Content-Type: application/pdf\r\n"
    "Content-Disposition: attachment; FileName*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n",
    "Content-Type: application/pdf\r\n"
    "Content-Disposition: attachment; filename*0=\"long\"; filename*1=\".pdf\"\r\n",
    "Content-Type: text/csv; name=\"=?utf-8?q?list=2Ecsv?=\"\r\n",
    "Content-Disposition: attachment\r\n",
])
def test_filename_of_answers_as_get_filename_does(headers: str) -> None:
    part = email.message_from_bytes((headers + "\r\nbody\r\n").encode())
    assert filename_of(part) == part.get_filename()


# What header_end() answers, as a regex: the first line that is empty (CRLF or LF alone).
_BLANK_LINE = re.compile(rb"(?:\A|\n)(\r?\n)")


@settings(max_examples=800)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"b: c", b" ", b"\r\n\r\n", b"\n\n"]),
                max_size=24))
def test_header_end_is_the_first_empty_line(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    m = _BLANK_LINE.search(raw)
    assert header_end(raw) == (m.start(1) if m else len(raw))
