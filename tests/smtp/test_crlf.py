"""Line endings made canonical at the front, and dot-stuffing for the upstream (RFC 5321 4.5.2)."""

from __future__ import annotations

import pickle

import pytest

from relayguard import crlf
from relayguard.crlf import Canonical, canonical_line_endings, dot_stuffed, is_canonical


@pytest.mark.parametrize("raw", [b"a\r\n", b".a\r\n", b"a\r\n.\r\n..b\r\n", b"\r\n.\r\n", b"..\r\n"])
def test_dot_stuffing_pieces_are_rfc5321_transparency(raw: bytes) -> None:
    """Joined, the pieces are every line with a leading dot doubled, then the end-of-data line;
    unstuffed by aiosmtpd's own rule they give ``raw`` back."""
    sent = b"".join(dot_stuffed(raw))
    lines = raw.split(b"\r\n")[:-1]
    assert sent == b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"
    body = sent[: -len(b".\r\n")]
    assert b"".join(ln[1:] if ln.startswith(b".") else ln for ln in body.splitlines(keepends=True)) == raw


@pytest.mark.parametrize(("raw", "want"), [
    (b"a\r\nb\r\n", b"a\r\nb\r\n"), (b"a\nb", b"a\r\nb\r\n"), (b"a\rb\r\n", b"a\r\nb\r\n"),
    (b"a\n.\r\n", b"a\r\n.\r\n"), (b"", b"\r\n")])
def test_the_front_marks_what_it_made_canonical(raw: bytes, want: bytes) -> None:
    out = canonical_line_endings(raw)
    assert out == want
    assert type(out) is Canonical
    assert is_canonical(out)
    assert is_canonical(bytes(out))  # the mark only saves the counting: the answer is the same


def test_bytes_made_from_marked_bytes_are_counted_again() -> None:
    out = canonical_line_endings(b"a\r\nb\r\n")
    for derived in (out[:3], out.replace(b"a", b"a\n"), out + b"x\r", b"".join([out, b"\n"]),
                    pickle.loads(pickle.dumps(out))):
        assert type(derived) is bytes
    assert not is_canonical(out.replace(b"a", b"a\n"))
    assert not is_canonical(out + b"x\r")


def test_a_large_message_is_not_copied_to_be_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crlf, "MARK_MAX_BYTES", 8)
    raw = b"0123456789\r\n"
    assert canonical_line_endings(raw) is raw
    assert type(canonical_line_endings(b"0123456789\n")) is bytes
