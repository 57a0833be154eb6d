"""The MIME tree of a well-formed message at C speed: the very tree ``email``'s parser builds.

``email.parser.BytesFeedParser`` (compat32) hands every line of a message through a Python loop
and a regex: for a 100 KiB message with an attachment that was a third of the scan worker's time,
and it holds the whole message as a list of line strings. Here the boundary lines are found with
``bytes.find``, and the small header blocks are read field by field with the policy's own
``header_source_parse`` (the stdlib parser still reads the unusual ones).

Only the plain case is done here; anything the stdlib parser would flag or treat specially makes
:func:`split_message` return None and the caller parses the whole message the stdlib way. Taken
here only when all of these hold (otherwise None):

* every CR and LF is part of a CRLF and the message ends with one (``crlf.is_canonical``: the
  relay canonicalises line endings before the policy);
* every header block ends with an empty line, and no part is ``message/*`` or in a
  ``multipart/digest``;
* every multipart has a boundary, a 7bit/8bit/binary transfer encoding, a first delimiter line
  before its close delimiter, a close delimiter, and no two delimiter lines in a row;
* nesting is at most :data:`MAX_DEPTH` deep.

Within that, each rule below mirrors a line of ``email.feedparser.FeedParser._parsegen``
(Python 3.11): a line ends the part it is in when it matches the boundary pattern of this or any
enclosing multipart; the CRLF before a delimiter line belongs to the delimiter (trimmed from the
preamble, from a leaf's payload, and from a nested multipart's epilogue, which becomes None when
that leaves it empty); the epilogue is everything after the close delimiter line. The tests compare
both parsers' trees, defects included, on every sample message and many generated ones.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from email.message import Message

from relayguard.crlf import is_canonical

MAX_DEPTH = 32  # deeper trees go to the stdlib parser (and the detectors' own depth limit)

# email.feedparser.headerRE, for bytes: a header line, a continuation, or a "From " line.
_HEADER_LINE = re.compile(rb"(From |[\041-\071\073-\176]*:|[\t ])")
_CRLF = b"\r\n"
# Between two fields of a decoded header block: a line end not followed by a continuation.
_FIELD_BREAK = re.compile(r"\r\n(?![ \t])")


class _NotPlainError(Exception):
    """The message needs the stdlib parser."""


def split_message(raw: bytes) -> Message | None:
    """``email.message_from_bytes(raw, policy=compat32)`` for a plain, well-formed message;
    None when the stdlib parser must decide (see the module docstring)."""
    if not is_canonical(raw):
        return None
    try:
        return _Splitter(raw).part(0, len(raw), depth=0)
    except _NotPlainError:
        return None


class _Splitter:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def part(self, start: int, end: int, *, depth: int, child: bool = False) -> Message:
        """The message (or body part) in ``raw[start:end]``: no line in it is a delimiter line of
        an enclosing multipart. A ``child`` ends where its delimiter line starts, so the CRLF
        before that line is the delimiter's (see :func:`_trim_epilogue` for a nested multipart)."""
        if depth > MAX_DEPTH:
            raise _NotPlainError
        body = self._header_end(start, end)
        msg = _headers(self.raw[start:body])
        maintype = msg.get_content_maintype()
        if maintype == "message":
            raise _NotPlainError  # message/rfc822 and delivery-status have rules of their own
        if maintype == "multipart":
            self._multipart(msg, body, end, depth=depth)
            if child:
                _trim_epilogue(msg)
        else:
            # Cut before decoding: a copy of the payload less two characters was a third of a
            # scan worker's peak for a 25 MB message.
            if child and self.raw.endswith(_CRLF, body, end):
                end -= 2
            msg.set_payload(_text(self.raw, body, end))
        return msg

    def _header_end(self, start: int, end: int) -> int:
        """Where the body starts: after the first line that is not a header line, which must be
        empty (the stdlib parser would flag anything else as a missing separator)."""
        raw, pos = self.raw, start
        while pos < end:
            eol = raw.find(_CRLF, pos, end)
            if eol < 0:
                raise _NotPlainError  # a last line without CRLF, in the headers
            if eol == pos:
                return eol + 2
            if not _HEADER_LINE.match(raw, pos, eol + 2):
                raise _NotPlainError
            pos = eol + 2
        raise _NotPlainError  # headers up to the end, no body separator

    def _multipart(self, msg: Message, start: int, end: int, *, depth: int) -> None:
        boundary = msg.get_boundary()
        cte = str(msg.get("content-transfer-encoding", "8bit")).lower()
        if (boundary is None or not boundary.isascii() or cte not in ("7bit", "8bit", "binary")
                or msg.get_content_type() == "multipart/digest"):
            raise _NotPlainError
        lines = _Delimiters(self.raw, boundary.encode("ascii"), end)
        first = lines.next(start)
        if first is None or first[2]:
            raise _NotPlainError  # no start boundary, or a close delimiter first
        line_start, pos, _ = first
        if line_start > start:
            msg.preamble = _text(self.raw, start, line_start - 2)
        msg.set_payload([])  # the children are attached to it
        while True:
            found = lines.next(pos)
            if found is None:
                raise _NotPlainError  # no close delimiter
            next_start, next_end, close = found
            if next_start == pos:
                raise _NotPlainError  # two delimiter lines in a row
            msg.attach(self.part(pos, next_start, depth=depth + 1, child=True))
            if close:
                msg.epilogue = _text(self.raw, next_end, end)
                return
            pos = next_end


class _Delimiters:
    """The delimiter lines of one multipart, found with ``bytes.find`` and checked with the
    stdlib parser's own pattern (``--boundary``, optional ``--``, blanks, line end)."""

    def __init__(self, raw: bytes, boundary: bytes, end: int) -> None:
        self.raw, self.end = raw, end
        self.sep = b"--" + boundary
        self.pattern = re.compile(re.escape(self.sep) + rb"(--)?[ \t]*(\r\n|\r|\n)?$")

    def next(self, pos: int) -> tuple[int, int, bool] | None:
        """``(line start, line end after its CRLF, is the close delimiter)`` of the first
        delimiter line starting at or after ``pos`` (a line start), or None."""
        raw, end = self.raw, self.end
        at = pos if raw.startswith(self.sep, pos, end) else self._after_crlf(pos)
        while at >= 0:
            eol = raw.find(_CRLF, at, end)
            line_end = end if eol < 0 else eol + 2
            match = self.pattern.match(raw, at, line_end)
            if match:
                return at, line_end, match[1] is not None
            at = self._after_crlf(line_end - 2 if eol >= 0 else end)
        return None

    def _after_crlf(self, pos: int) -> int:
        found = self.raw.find(_CRLF + self.sep, pos, self.end)
        return found + 2 if found >= 0 else -1


def _headers(block: bytes) -> Message:
    """The header fields (and any defects) exactly as the stdlib parser reads them.

    ``block`` is a header block that ``_header_end`` found plain: every line a field, a
    continuation or a "From " line, then the empty line. The common case is built here the way
    ``FeedParser._parse_headers`` builds it (each field through the policy's own
    ``header_source_parse``, which gives the same for a field's lines joined as for the list)
    without the parser's line-by-line machinery (a fifth of a 1 KiB message's decision); a block
    with anything that parser treats specially (a "From " line, a continuation first, a field
    without a name) is still handed to it.
    """
    fields = _FIELD_BREAK.split(_text(block, 0, max(len(block) - 4, 0))) if len(block) > 2 else []
    if fields and (fields[0][0] in " \t" or any(f.startswith(("From ", ":")) for f in fields)):
        return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(block, headersonly=True)
    msg = Message(policy=email.policy.compat32)
    for field in fields:
        msg.set_raw(*email.policy.compat32.header_source_parse([field]))
    return msg


def _text(raw: bytes, start: int, end: int) -> str:
    """``raw[start:end]`` decoded as BytesFeedParser.feed decodes, with no copy of the slice: a
    leaf's payload can be nearly all of a 25 MB message, and the copy was a third of a scan
    worker's peak for one."""
    return str(memoryview(raw)[start:end], "ascii", "surrogateescape")


def _trim_epilogue(part: Message) -> None:
    """The CRLF before a delimiter line is the delimiter's: off a nested multipart's epilogue
    (None when nothing is left)."""
    if part.epilogue == "":
        part.epilogue = None
    elif part.epilogue is not None and part.epilogue.endswith("\r\n"):
        part.epilogue = part.epilogue[:-2]
