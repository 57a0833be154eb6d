"""Walk a parsed message's MIME tree without recursion, bounded in depth and part count.

Places: the subject and all inline text parts are ``body``/``subject`` (a multipart/alternative
plain and HTML pair is one body), other parts ``attachment:<filename>`` (or ``part:N`` without a
name). Inside a nested message the same names hang below the attachment's place:
``attachment:fwd.eml/body``.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import importlib
from collections.abc import Callable, Iterator
from email.errors import HeaderParseError, MessageDefect
from email.header import decode_header, make_header
from email.message import Message

import pybase64

from relayguard.extract.base import Budget, Dispatch, Item, Problem, Source, TextUnit, UnscannableError
from relayguard.extract.text import extract_html, extract_text
from relayguard.message import filename_of

_BASE64_GROWTH = 4 / 3  # encoded size over decoded size, to refuse a huge part before decoding


def parse_message(data: bytes) -> Message:
    """Parse a nested message the way the caller parsed the outer one (compat32: fast, lenient)."""
    return email.message_from_bytes(data, policy=email.policy.compat32)


def walk_message(msg: Message, *, where: str, depth: int, budget: Budget,
                 dispatch: Dispatch) -> Iterator[Item]:
    """Items for ``msg`` (at ``where``: "" top level, else the place of the nested message)."""
    prefix = f"{where}/" if where else ""
    yield from _subject(msg, prefix, budget)
    stack: list[tuple[Message, int]] = [(msg, depth)]
    index = 0
    while stack:
        part, level = stack.pop()
        budget.check_time()
        index += 1
        budget.parts += 1
        if budget.parts > budget.limits.max_mime_parts:
            yield Problem(where or "message", "too many MIME parts")
            return
        if level > budget.limits.max_depth:
            yield Problem(_place(part, prefix, index), "nesting too deep")
            continue
        if part.is_multipart():  # a multipart whose boundary is broken is read as a leaf below
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            if part.get_content_type() == "message/rfc822":
                yield from _nested(part, children, prefix=prefix, index=index, level=level,
                                   budget=budget, dispatch=dispatch)
            else:
                stack.extend((child, level + 1) for child in reversed(children))
            continue
        yield from _leaf(part, prefix=prefix, index=index, level=level, budget=budget, dispatch=dispatch)


def _nested(part: Message, children: list[Message], *, prefix: str, index: int, level: int,
            budget: Budget, dispatch: Dispatch) -> Iterator[Item]:
    where = _place(part, prefix, index, default="message.eml")
    if level + 1 > budget.limits.max_depth:
        yield Problem(where, "nesting too deep")
        return
    for child in children:  # compat32 parses a message/rfc822 payload into a one-item list
        yield from walk_message(child, where=where, depth=level + 1, budget=budget, dispatch=dispatch)


def _leaf(part: Message, *, prefix: str, index: int, level: int, budget: Budget,
          dispatch: Dispatch) -> Iterator[Item]:
    where = _place(part, prefix, index)
    try:
        data = _payload(part, budget)
    except UnscannableError as exc:
        yield Problem(where, exc.reason)
        return
    name = _filename(part)
    charset = part.get_content_charset()
    ctype = part.get_content_type()  # once: each call looks through every header
    if name:
        yield TextUnit(where, name)  # a filename can leak an identifier too
    elif ctype in ("text/plain", "text/html"):
        src = Source(data, where, ctype=ctype, depth=level, charset=charset)
        body = extract_html if ctype == "text/html" else extract_text
        yield from body(src, budget, charset)
        return
    yield from dispatch(Source(data, where, name=name, ctype=ctype, depth=level, charset=charset), budget)

# The decoder compat32's get_payload uses for base64 (a private module, so looked up by name).
_email_decode_b: Callable[[bytes], tuple[bytes, list[MessageDefect]]] = (
    importlib.import_module("email._encoded_words").decode_b)


def _decode_b(encoded: bytes) -> tuple[bytes, list[MessageDefect]]:
    """email's ``decode_b``, whose first try is a strict decode of correctly padded input: here
    pybase64's SIMD decoder makes that try (~40x binascii's speed; binascii was 14 % of the
    relay's CPU at 100 KiB). Input it refuses goes to ``decode_b`` itself, for the same value
    and the same defects (``tests/extract/test_base64.py`` compares them)."""
    if len(encoded) % 4 == 0:
        try:
            return pybase64.b64decode(encoded, validate=True), []
        except binascii.Error:
            pass
    return _email_decode_b(encoded)


def _decode_base64(part: Message, raw: str) -> bytes | None:
    """What ``get_payload(decode=True)`` returns for an ASCII base64 part, with a third the memory.

    compat32 splits the payload into a list of lines and joins them again before decoding: for a
    20 MB attachment that is about 80 MB of short-lived objects, most of a large xlsx scan's peak.
    Deleting the line breaks in one ``translate`` gives the same bytes (``bytes.splitlines`` breaks
    only at CR and LF) for the same decoder. Anything else (other encodings, non-ASCII payloads)
    is left to ``get_payload``: None.
    """
    if part.is_multipart() or str(part.get("content-transfer-encoding", "")).lower() != "base64" \
            or not raw.isascii():
        return None
    if len(raw) >= _LARGE_BASE64 and _strictly_valid(raw):
        return binascii.a2b_base64(raw)  # see _strictly_valid
    value, defects = _decode_b(raw.encode("ascii").translate(None, b"\r\n"))
    for defect in defects:
        part.policy.handle_defect(part, defect)
    return value


# From this size a payload is checked a slice at a time and decoded straight from the string:
# the two whole copies of it that the translate above makes were, with the decoded bytes, the
# peak of a worker scanning a 25 MB message (tracemalloc: 75 MiB over the message).
_LARGE_BASE64 = 1 << 20
_CHECK_SLICE = 1 << 20
_ALPHABET_AND_BREAKS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/\r\n"


def _strictly_valid(raw: str) -> bool:
    """Whether ``raw`` less its line breaks is what the strict decode in :func:`_decode_b` takes
    without a defect: whole quanta of alphabet characters, padding (at most two) only at the
    end. Then binascii's lenient decode of ``raw`` itself, which skips the line breaks, gives the
    same bytes, with no copy of the input. Checked a slice at a time."""
    if (len(raw) - raw.count("\r") - raw.count("\n")) % 4:
        return False
    padding = 0
    for start in range(0, len(raw), _CHECK_SLICE):
        chunk = raw[start:start + _CHECK_SLICE].encode("ascii")
        if padding:  # the padding began in an earlier slice: only more of it may follow
            if chunk.translate(None, b"=\r\n"):
                return False
            padding += chunk.count(b"=")
        elif rest := chunk.translate(None, _ALPHABET_AND_BREAKS):
            first = chunk.index(b"=") if rest[:1] == b"=" else -1
            if first < 0 or chunk[first:].translate(None, b"=\r\n"):
                return False  # not the alphabet, or not only padding from the first "=" on
            padding = len(rest)
    return padding <= 2


def _payload(part: Message, budget: Budget) -> bytes:
    raw = part.get_payload()
    encoded = len(raw) if isinstance(raw, str | bytes) else 0
    if encoded > budget.limits.max_part_bytes * _BASE64_GROWTH + 1024:
        raise UnscannableError("part over size limit")
    decoded = _decode_base64(part, raw) if isinstance(raw, str) else None
    data = decoded if decoded is not None else part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    if len(data) > budget.limits.max_part_bytes:
        raise UnscannableError("part over size limit")
    budget.add_decoded(len(data))
    return data


def _filename(part: Message) -> str:
    """The part's filename, RFC 2047/2231 decoded; "unnamed" when it is there but undecodable."""
    try:
        name = filename_of(part)
        return str(make_header(decode_header(name))) if name else ""
    except (LookupError, ValueError, TypeError, UnicodeError, HeaderParseError):
        return "unnamed"


def _is_body(part: Message) -> bool:
    disposition = (part.get("Content-Disposition") or "").split(";", 1)[0].strip().lower()
    return (disposition != "attachment" and not filename_of(part)
            and part.get_content_type() in ("text/plain", "text/html"))


def _place(part: Message, prefix: str, index: int, *, default: str = "") -> str:
    if _is_body(part):
        return f"{prefix}body"
    name = _filename(part) or default
    if prefix:
        return f"{prefix}{name or f'part:{index}'}"
    return f"attachment:{name}" if name else f"part:{index}"


def _subject(msg: Message, prefix: str, budget: Budget) -> Iterator[TextUnit]:
    raw = msg.get("Subject")
    if not raw:
        return
    try:
        subject = str(make_header(decode_header(str(raw))))
    except (LookupError, ValueError, UnicodeError, HeaderParseError):
        subject = str(raw)
    yield TextUnit(f"{prefix}subject", subject[: budget.limits.max_header_bytes])
