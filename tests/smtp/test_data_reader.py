"""RelaySMTP's chunked DATA reader against aiosmtpd 1.4.6's own smtp_DATA, byte for byte."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.config import SmtpSettings
from relayguard.smtp.data import DataScanner, DataState
from relayguard.smtp.server import RelaySMTP, SessionLimiter

MAX_LINE = 78  # the smallest max_line_length the settings allow: line_length_limit is 80
LINE_LIMIT = MAX_LINE + 2
SIZE_LIMIT = 300


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


class _Recorder:
    def __init__(self) -> None:
        self.content: bytes | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.content = envelope.original_content
        return "250 recorded"


async def _never(*_: object) -> str:
    raise AssertionError("no AUTH here")


def _servers(recorder: _Recorder) -> tuple[SMTP, SMTP]:
    """Plain aiosmtpd and RelaySMTP with the same limits (aiosmtpd reads line_length_limit from
    the class when it builds its StreamReader)."""
    plain_cls = type("PlainSMTP", (SMTP,), {"line_length_limit": LINE_LIMIT})
    plain = plain_cls(recorder, data_size_limit=SIZE_LIMIT, decode_data=False)
    relay = RelaySMTP(recorder,  # type: ignore[arg-type]
                      settings=SmtpSettings(max_line_length=MAX_LINE, max_message_size=SIZE_LIMIT),
                      verify=_never, limiter=SessionLimiter(total=1, per_ip=1), tls_context=None)
    return plain, relay


async def _run_data(server: SMTP, recorder: _Recorder, chunks: list[bytes]) -> tuple[Any, ...]:
    """Drive ``server.smtp_DATA`` offline: the chunks arrive one by one, as from a socket.
    Returns (content the handler saw, replies, bytes left unread for the next command)."""
    reader = asyncio.StreamReader(limit=server.line_length_limit)
    writer = _Writer()
    srv: Any = server
    srv._reader, srv._writer, srv.transport = reader, writer, object()
    srv.session = srv._create_session()
    srv.session.host_name = "client.test"
    srv.envelope = srv._create_envelope()
    srv.envelope.rcpt_tos.append("to@example.org")
    recorder.content = None

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            for _ in range(5):  # let the reader take it before the next one arrives
                await asyncio.sleep(0)

    feeder = asyncio.create_task(feed())
    await asyncio.wait_for(srv.smtp_DATA(""), 10)
    await feeder
    if srv._timeout_handle is not None:
        srv._timeout_handle.cancel()
    go_ahead, *replies, last = bytes(writer.out).split(b"\r\n")
    assert go_ahead == b"354 End data with <CR><LF>.<CR><LF>" and last == b""
    return recorder.content, replies, bytes(reader._buffer)  # type: ignore[attr-defined]


def _both(chunks: list[bytes]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    async def run() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        recorder = _Recorder()
        plain, relay = _servers(recorder)
        return (await _run_data(plain, recorder, chunks), await _run_data(relay, recorder, chunks))
    return asyncio.run(run())


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _scan(chunks: list[bytes], size_limit: int | None = SIZE_LIMIT) -> tuple[DataScanner, int, int]:
    """Feed chunks until the end; (scanner, index of the chunk that ended DATA, bytes of it used)."""
    scanner = DataScanner(size_limit=size_limit, line_limit=LINE_LIMIT, overrun_limit=LINE_LIMIT)
    for i, chunk in enumerate(chunks):
        if (end := scanner.feed(chunk)) >= 0:
            return scanner, i, end
    raise AssertionError("no end of data found")


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400).map(lambda b: bytes(b"a.\r\n"[x % 4] for x in b)),
       cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_same_content_reply_and_leftover_as_aiosmtpd(body: bytes, cuts: list[int]) -> None:
    """Any mix of 'a', '.', CR and LF, cut anywhere, gives what aiosmtpd's own smtp_DATA gives."""
    data = body + b"\r\n.\r\nQUIT\r\n"
    plain, relay = _both(_cut(data, cuts))
    assert relay == plain


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(min_value=0, max_value=LINE_LIMIT + 4), max_size=4),
       tail=st.sampled_from([b"", b"\r", b"a.", b"\n"]),
       cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_lines_around_the_length_limit_get_what_aiosmtpd_gives(lengths: list[int], tail: bytes,
                                                               cuts: list[int]) -> None:
    """Lines a few bytes either side of the limit, cut anywhere: the chunk reader steps from line
    to line as far as the limit reaches. (Four of them may cross the size limit too.)"""
    body = b"".join(b"." * (n % 3 == 0) + b"a" * n + b"\r\n" for n in lengths) + tail
    data = body + b"\r\n.\r\nQUIT\r\n"
    plain, relay = _both(_cut(data, cuts))
    assert relay == plain


def test_terminator_split_at_every_boundary() -> None:
    """The end of data is found wherever the reads split it, and the rest is left for commands."""
    data = b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n"
    for i in range(1, len(data)):
        for j in range(i, len(data)):
            chunks = [c for c in (data[:i], data[i:j], data[j:]) if c]
            scanner, k, end = _scan(chunks)
            assert b"".join(chunks[k:])[end:] == b"QUIT\r\n", (i, j)
            assert scanner.content() == b"Subject: x\r\n\r\n.dot\r\nbody\r\n", (i, j)


def test_every_split_of_the_smuggling_vectors_matches_aiosmtpd() -> None:
    """Bare-LF / bare-CR end-of-data look-alikes stay content under every two-way split."""
    for vector in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"):
        data = b"first" + vector + b"MAIL FROM:<x@y>\r\n.\r\nQUIT\r\n"
        for cut in range(len(data) + 1):
            plain, relay = _both(_cut(data, [cut]))
            assert relay == plain, (vector, cut)
            # One message holding the look-alike and the "command" (a CRLF-led dot is unstuffed).
            assert relay[0].replace(b"\r\n\n", b"\r\n.\n").replace(b"\r\n\r", b"\r\n.\r") == (
                b"first" + vector + b"MAIL FROM:<x@y>\r\n"), (vector, cut)
            assert relay[1][0] == b"250 recorded" and relay[2] == b"QUIT\r\n"


def test_empty_message_and_first_line_dot() -> None:
    """'.CRLF' straight after 354 is an empty message; a first line '..x' loses one dot."""
    assert _both([b".\r\nQUIT\r\n"])[1] == (b"", [b"250 recorded"], b"QUIT\r\n")
    assert _both([b".", b"\r", b"\nQUIT\r\n"])[1][0] == b""
    assert _both([b"..x\r\n.\r\n"])[1][0] == b".x\r\n"


def test_over_the_size_limit_is_552_after_the_end() -> None:
    """Too much data is read to its end, not kept, and answered 552 like aiosmtpd."""
    data = b"a" * 70 + b"\r\n"
    plain, relay = _both([data] * 5 + [b".\r\nNOOP\r\n"])
    assert relay == plain == (None, [b"552 Error: Too much mail data"], b"NOOP\r\n")
    scanner, _, _ = _scan([data] * 5 + [b".\r\n"])
    assert scanner.state is DataState.TOO_MUCH and scanner._out.tell() == 0


def test_overlong_line_is_500_after_the_end() -> None:
    """A line over the limit, even split over many reads, gives 500 once DATA has ended."""
    for length in (LINE_LIMIT - 1, LINE_LIMIT, LINE_LIMIT + 1, LINE_LIMIT + 3, 5000):
        line = b"x" * (length - 2) + b"\r\n"
        chunks = [line[i:i + 7] for i in range(0, len(line), 7)] + [b".\r\n"]
        plain, relay = _both(chunks)
        assert relay == plain, length
        too_long = relay[1][0] == b"500 Line too long (see RFC5321 4.5.3.1.6)"
        assert too_long == (length > LINE_LIMIT), length


def test_long_line_that_also_breaks_the_size_limit_gets_aiosmtpd_reply() -> None:
    """Which of 500 and 552 wins when one line breaks both follows aiosmtpd's order exactly."""
    got = {}
    for length in (LINE_LIMIT + 1, LINE_LIMIT + 2, LINE_LIMIT + 3):
        short = SIZE_LIMIT + 1 - length  # short lines, then the long one crosses the size limit
        lead = b"b" * 48 + b"\r\n"
        lead = lead * (short // 50 - 1) + b"c" * (short % 50 + 48) + b"\r\n"
        plain, relay = _both([lead + b"x" * (length - 2) + b"\r\n.\r\n"])
        assert relay == plain, length
        got[length] = relay[1][0][:3]
    # aiosmtpd counts a line before its length check, unless readuntil() already overran on it.
    assert got == {LINE_LIMIT + 1: b"552", LINE_LIMIT + 2: b"552", LINE_LIMIT + 3: b"500"}


def test_endless_line_is_not_buffered() -> None:
    """With no size limit, a line that never ends is dropped once over the limit."""
    scanner = DataScanner(size_limit=None, line_limit=LINE_LIMIT, overrun_limit=LINE_LIMIT)
    for _ in range(100):
        assert scanner.feed(b"y" * 4096) == -1
    assert scanner.state is DataState.TOO_LONG and scanner._out.tell() == 0
