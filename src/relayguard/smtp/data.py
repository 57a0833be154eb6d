"""The body of SMTP DATA, taken in large chunks with exactly aiosmtpd 1.4.6's rules.

aiosmtpd reads DATA one ``readuntil(b"\\r\\n")`` line at a time and un-dot-stuffs with a Python
loop over the lines: for a 30 MB message that is 400,000 trips through the event loop. The
:class:`DataScanner` here is fed whatever the socket delivered and does the same with a few bytes
operations per chunk. Its rules, each mirroring a line of ``aiosmtpd.smtp.SMTP.smtp_DATA``:

* lines are delimited by CRLF only (a bare CR or LF is data), and the first line that is exactly
  ``.<CR><LF>`` ends DATA. That is: the first ``<CR><LF>.<CR><LF>``, counting the CRLF that ended
  the DATA command, so ``.<CR><LF>`` straight after the 354 is an empty message;
* a line longer than ``line_limit`` bytes (CRLF included) gives 500, more than ``size_limit``
  bytes before the ``.<CR><LF>`` gives 552; both only once the terminator has arrived, the first
  of them to happen (in aiosmtpd's order, see :meth:`DataScanner._line_ended`) wins;
* a line beginning with "." loses that dot (RFC 5321 4.5.2).
"""

from __future__ import annotations

import enum
import io

TERMINATOR = b"\r\n.\r\n"
# aiosmtpd's lines start after every CRLF; a line starting with "." loses the dot. "\r\n." cannot
# overlap itself, so one replace() per chunk removes exactly those dots; the ones whose CRLF
# came at the end of the previous chunk are removed by hand (DataScanner._unstuff).
_STUFFED, _UNSTUFFED = b"\r\n.", b"\r\n"


def _end_of_data(chunk: bytes) -> tuple[int, bool]:
    """Where the first terminator in ``chunk`` ends (-1: none), and whether a line starting with
    a dot comes before it. Both from one search for CRLF "." when, as usual, the terminator is
    the first such line; else a second search finds the terminator, still at C speed."""
    first = chunk.find(_STUFFED)
    if first < 0:
        return -1, False
    if chunk.startswith(TERMINATOR, first):
        return first + len(TERMINATOR), False
    end = chunk.find(TERMINATOR, first)
    return (end + len(TERMINATOR) if end >= 0 else -1), True


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
    TOO_MUCH = "552 Error: Too much mail data"


class DataScanner:
    """Feed it the bytes after the 354 reply; :meth:`feed` says where DATA ended.

    ``overrun_limit`` is the ``limit`` aiosmtpd's StreamReader was built with: a line whose text
    (CRLF not counted) is longer makes ``readuntil`` raise before the line is counted towards the
    size, so such a line is refused with 500 even when it also breaks the size limit.
    """

    def __init__(self, *, size_limit: int | None, line_limit: int, overrun_limit: int) -> None:
        self.size_limit, self.line_limit, self.overrun_limit = size_limit, line_limit, overrun_limit
        self.state = DataState.NOMINAL
        self.done = False
        # The content, un-stuffed as it comes, while NOMINAL. A BytesIO, not a bytearray: its
        # getvalue() hands over the buffer itself, so the message exists once, never twice.
        self._out = io.BytesIO()
        # The CRLF that ended the DATA command: a terminator may start in it (empty message).
        self._tail = b"\r\n"  # the last 4 bytes seen, for a terminator split across chunks
        self._done_bytes = 0  # bytes of the CRLF-ended lines so far (aiosmtpd's num_bytes)
        self._cur = 0  # bytes of the line not yet ended, a trailing CR included
        self._cr_end = False  # the bytes so far end with CR: a chunk starting LF ends the line

    def feed(self, chunk: bytes) -> int:
        """Take ``chunk``; -1 while DATA goes on, else how many of its bytes belonged to DATA
        (the rest are the client's next commands)."""
        assert not self.done
        tail = self._tail
        end = (tail + chunk[:4]).find(TERMINATOR)  # one starting in the previous chunk comes first
        if end >= 0:
            # At most chunk's first byte is content (an LF ending the line before the "."): no
            # dot-stuffed line can be in it.
            end, stuffed = end + len(TERMINATOR) - len(tail), False
        else:
            end, stuffed = _end_of_data(chunk)
        if end < 0:
            self._take(chunk, stuffed)
            self._tail = chunk[-4:] if len(chunk) >= 4 else (tail + chunk)[-4:]
            return -1
        self.done = True
        body_end = end - 3  # the content ends with the CRLF before ".<CR><LF>"
        if body_end >= 0:
            self._take(chunk[:body_end], stuffed)
        elif self.state is DataState.NOMINAL and body_end == -2:
            # ".\r" of the terminator came with the previous chunk: it is not content (the dot,
            # at the start of a line, was taken off as stuffing; the CR remains). The line it
            # began had not ended, so no limit had looked at it.
            self._out.seek(-1, io.SEEK_END)
            self._out.truncate()
        return end

    def content(self) -> bytes:
        """The message, dot-unstuffed; only after :meth:`feed` found the end, in state NOMINAL."""
        assert self.done and self.state is DataState.NOMINAL
        out, self._out = self._out, io.BytesIO()
        return out.getvalue()

    def _take(self, data: bytes, stuffed: bool) -> None:
        if self.state is DataState.NOMINAL and data:
            self._count(data)
            if self.state is DataState.NOMINAL:
                self._out.write(self._unstuff(data, stuffed))
            else:
                self._out = io.BytesIO()  # refused: drop what we hold, keep reading to the end

    def _unstuff(self, data: bytes, stuffed: bool) -> bytes:
        """``data`` without the dot that starts each of its lines, lines begun at the end of
        the previous chunk (CRLF, or CR then LF here) included. ``stuffed``: CRLF "." occurs
        inside ``data`` (False spares a pass over it)."""
        prev = self._tail[-2:]  # feed() moves the tail on only after taking the chunk
        if prev == b"\r\n" and data[:1] == b".":
            data = data[1:]
        elif prev[-1:] == b"\r" and data[:2] == b"\n.":
            data = b"\n" + data[2:]
        return data.replace(_STUFFED, _UNSTUFFED) if stuffed else data

    def _count(self, data: bytes) -> None:
        """Line lengths and size for ``data``: at C speed when nothing is near a limit (the usual
        case), else :meth:`_count_lines` to get aiosmtpd's exact order."""
        if self._cr_end and data[:1] == b"\n":
            self._count_lines(data)  # a CRLF split across chunks: the search below would miss it
            return
        ended = self._lines_end(data)
        cur = self._cur + len(data) if ended == 0 else len(data) - ended
        total = self._done_bytes + self._cur + len(data)
        if ended < 0 or cur > self.overrun_limit or (self.size_limit and total > self.size_limit):
            self._count_lines(data)
            return
        self._done_bytes, self._cur, self._cr_end = total - cur, cur, data.endswith(b"\r")

    def _lines_end(self, data: bytes) -> int:
        """Where the last CRLF-ended line in ``data`` ends (0 when none does), or -1 when a line
        may be longer than ``line_limit``. Each step is one ``rfind`` for the last CRLF within
        a limit's length of the line start: a hundred C calls for 100 KiB of short lines, where
        splitting them made a bytes object per line (10 % of the relay's CPU at 100 KiB)."""
        pos, carried = 0, self._cur  # the first line began in an earlier chunk
        while True:
            reach = pos + self.line_limit - carried
            crlf = data.rfind(b"\r\n", pos, reach)
            if crlf < 0:
                # No CRLF within reach: the line from pos is too long, or data ends first.
                return pos if reach >= len(data) else -1
            pos, carried = crlf + 2, 0

    def _count_lines(self, data: bytes) -> None:
        """Line by line, exactly as aiosmtpd: only when a limit may be broken in ``data``."""
        start = 0
        if self._cr_end and data[:1] == b"\n":
            self._line_ended(self._cur + 1)
            start = 1
        while self.state is DataState.NOMINAL:
            crlf = data.find(b"\r\n", start)
            if crlf < 0:
                self._cur += len(data) - start
                self._cr_end = data.endswith(b"\r")
                # readuntil() gives up on a line once its text (a CR that may yet be followed by
                # LF aside) is longer than its limit; that happens before the line is counted.
                if self._cur - self._cr_end > self.overrun_limit:
                    self.state = DataState.TOO_LONG
                return
            self._line_ended(self._cur + crlf - start + 2)
            start = crlf + 2

    def _line_ended(self, length: int) -> None:
        """One CRLF-ended line of ``length`` bytes, with smtp_DATA's checks in smtp_DATA's order:
        LimitOverrunError (text over the reader's limit), then the size, then the line length."""
        self._cur, self._cr_end = 0, False
        if length - 2 > self.overrun_limit:
            self.state = DataState.TOO_LONG
            return
        self._done_bytes += length
        if self.size_limit and self._done_bytes > self.size_limit:
            self.state = DataState.TOO_MUCH
        elif length > self.line_limit:
            self.state = DataState.TOO_LONG
