"""The Message-ID and Subject the handler stores and logs: read as the engine reads headers."""

from __future__ import annotations

import pytest

from relayguard.smtp.handler import _headers_of


@pytest.mark.parametrize(("raw", "expected"), [
    (b"Message-ID: <a@b>\r\nSubject: Clinic times\r\n\r\nBody\r\n", ("<a@b>", "Clinic times")),
    (b"Subject: Clinic\r\n times\r\n\r\n", (None, "Clinic times")),  # unfolded
    (b"subject : obsolete form\r\nmessage-id:<x@y>\r\n\r\n", ("<x@y>", "obsolete form")),
    (b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n", (None, "=?utf-8?q?caf=C3=A9?=")),  # as sent
    (b"Subject: caf\xc3\xa9 \xff\r\n\r\n", (None, "caf\u00e9 \ufffd")),  # bad bytes replaced
    (b"Subject: a\x00b\x1bc\r\n\r\n", (None, "a?b?c")),  # controls cannot forge a log line
    (b"Subject: first\r\nSubject: second\r\n\r\n", (None, "first")),
    (b"To: x@y\r\n\r\nSubject: in the body\r\n", (None, None)),
    (b"Subject:\r\n\r\n", (None, None)),
])
def test_message_id_and_subject(raw: bytes, expected: tuple[str | None, str | None]) -> None:
    assert _headers_of(raw) == expected


def test_only_the_start_of_a_huge_header_block_is_read() -> None:
    raw = b"X-Pad: " + b"p" * (300 * 1024) + b"\r\nSubject: too far\r\n\r\nBody\r\n"
    assert _headers_of(raw) == (None, None)
