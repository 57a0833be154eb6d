"""Line endings: SMTP's CRLF, made certain once at the front and relied on at the upstream."""

from __future__ import annotations

import re

# The line endings aiosmtplib rewrites to CRLF when it sends (its LINE_ENDINGS_REGEX).
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")


# Up to this size canonical_line_endings() marks what it returns (a copy: see Canonical).
MARK_MAX_BYTES = 1024 * 1024


class Canonical(bytes):
    """Bytes that :func:`canonical_line_endings` returned, so :func:`is_canonical` need not count
    them again. The front checks every message once; the MIME splitter and the upstream each need
    the answer too, and each count is a pass over the whole message (~150 us at 100 KiB, 15 % of
    the relay's CPU there when done three times).

    The mark is the type, as markupsafe's ``Markup`` marks escaped text: every bytes operation
    (a slice, ``replace``, ``join``, ``+``) gives plain bytes, so bytes made from a checked
    message are never taken as checked themselves.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (bytes(self),)  # to a scan worker as plain bytes: no import, no mark


def is_canonical(raw: bytes) -> bool:
    """Every line ends in CRLF and there is no bare CR or LF."""
    if type(raw) is Canonical:
        return True
    crlf = raw.count(b"\r\n")
    return raw.endswith(b"\r\n") and raw.count(b"\n") == crlf and raw.count(b"\r") == crlf


def canonical_line_endings(raw: bytes) -> bytes:
    """``raw`` with every bare LF and bare CR made CRLF, ending in CRLF.

    SMTP smuggling (December 2023) hides ``<LF>.<CR><LF>`` or ``<CR>.<CR>`` inside DATA so that a
    lenient upstream reads an end of data, and then a second message, where we saw one. aiosmtpd
    ends DATA only at ``<CR><LF>.<CR><LF>``, and aiosmtplib turns bare line ends into dot-stuffed
    CRLF lines when it sends. Doing the same here, before the policy looks, means the policy, the
    store and the upstream all see the same bytes, and none of them contains a bare CR or LF.
    """
    if is_canonical(raw):
        out = raw  # the common case: three C-speed counts instead of a regex holding the GIL
    else:
        out = _LINE_END.sub(b"\r\n", raw)
        out = out if out.endswith(b"\r\n") else out + b"\r\n"
    # Marking copies the bytes: a large message is counted again by whoever asks instead.
    return Canonical(out) if len(out) <= MARK_MAX_BYTES else out


def dot_stuffed(raw: bytes) -> list[bytes]:
    """RFC 5321 4.5.2 transparency for canonical ``raw``, with the end-of-data line, as pieces
    to write one after another: at most one copy of the message (none when no line starts with
    a dot), where joining them would make two more."""
    first = b"." if raw.startswith(b".") else b""
    return [first, raw.replace(b"\r\n.", b"\r\n.."), b".\r\n"]
