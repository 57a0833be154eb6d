"""Dot-stuffing for the upstream (RFC 5321 4.5.2), written as pieces."""

from __future__ import annotations

import pytest

from relayguard.crlf import dot_stuffed


@pytest.mark.parametrize("raw", [b"a\r\n", b".a\r\n", b"a\r\n.\r\n..b\r\n", b"\r\n.\r\n", b"..\r\n"])
def test_dot_stuffing_pieces_are_rfc5321_transparency(raw: bytes) -> None:
    """Joined, the pieces are every line with a leading dot doubled, then the end-of-data line;
    unstuffed by aiosmtpd's own rule they give ``raw`` back."""
    sent = b"".join(dot_stuffed(raw))
    lines = raw.split(b"\r\n")[:-1]
    assert sent == b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"
    body = sent[: -len(b".\r\n")]
    assert b"".join(ln[1:] if ln.startswith(b".") else ln for ln in body.splitlines(keepends=True)) == raw
