"""The fast MIME splitter builds exactly the stdlib parser's tree, or declines.

Every message here is parsed both ways; where the splitter takes a message, both trees must be
equal in every attribute the stdlib parser sets (headers, unixfrom, preamble, epilogue, payloads,
defects). Generated messages vary the things the parser's rules are about: preambles, epilogues,
blanks after delimiters, nesting, boundaries that are prefixes of each other, look-alike lines,
parts without headers, non-ASCII bytes; and the irregular shapes the splitter must leave alone.
"""

from __future__ import annotations

import email
import email.policy
import random
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from relayguard.config import ScanSettings
from relayguard.message import parse_message, split_header_block
from relayguard.mimesplit import MAX_DEPTH, split_message

CORPUS = Path(__file__).parents[1] / "corpus"


def tree(msg: Message) -> tuple[Any, ...]:
    payload = msg._payload
    return (type(msg), msg._unixfrom, list(msg._headers), msg._default_type,
            msg.preamble, msg.epilogue, msg._charset,
            [(type(d).__name__, str(d)) for d in msg.defects],
            [tree(p) for p in payload] if isinstance(payload, list) else payload)


def stdlib(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def assert_same_or_declined(raw: bytes) -> bool:
    """True when the splitter took ``raw`` (and built the stdlib's tree)."""
    fast = split_message(raw)
    if fast is None:
        return False
    assert tree(fast) == tree(stdlib(raw))
    assert fast.as_bytes() == stdlib(raw).as_bytes()
    return True


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_corpus_messages_split_as_the_stdlib_parses_them(path: Path) -> None:
    assert assert_same_or_declined(path.read_bytes())


# ---- generated messages -------------------------------------------------------------------

HEADERS = [b"Subject: s", b"X-Long: a\r\n\tcontinued", b"Content-Disposition: attachment; filename=\"a.txt\"",
           b"Content-Transfer-Encoding: base64", b"X-Empty:"]
BODY_LINES = [b"plain words", b"", b"--", b"- not a boundary", b"caf\xc3\xa9 \xff", b"  indented",
              b"From here", b"Subject: looks like a header", b"=3D"]


def _body(rng: random.Random, boundaries: list[bytes]) -> bytes:
    lines = [rng.choice(BODY_LINES) for _ in range(rng.randrange(0, 6))]
    if boundaries and rng.random() < 0.3:  # a line that starts like a delimiter but is not one
        lines.insert(0, b"--" + rng.choice(boundaries) + rng.choice([b"x", b"-x", b"--x", b" --"]))
    return b"".join(line + b"\r\n" for line in lines)


def _leaf(rng: random.Random, boundaries: list[bytes]) -> bytes:
    if rng.random() < 0.1:
        return b"\r\n" + _body(rng, boundaries)  # a part with no header fields at all
    ctype = rng.choice([b"text/plain", b"text/html; charset=utf-8", b"application/octet-stream", b"text/csv"])
    headers = [b"Content-Type: " + ctype, *rng.sample(HEADERS, rng.randrange(0, 3))]
    return b"".join(h + b"\r\n" for h in headers) + b"\r\n" + _body(rng, boundaries)


def _multipart(rng: random.Random, depth: int, boundaries: list[bytes]) -> bytes:
    # Boundaries that are prefixes of the enclosing ones (and the other way round) on purpose.
    boundary = (boundaries[-1] + rng.choice([b"1", b"=", b"_x"])) if boundaries and rng.random() < 0.5 \
        else rng.choice([b"b", b"==b==", b"outer", b"b 2"])
    if boundary in boundaries:
        boundary += b"z%d" % depth
    inner = [*boundaries, boundary]
    sub = rng.choice([b"mixed", b"alternative", b"related"])
    out = b"Content-Type: multipart/" + sub + b'; boundary="' + boundary + b'"\r\n\r\n'
    out += rng.choice([b"", b"preamble\r\n", b"\r\n", b"pre\r\n\r\n", b"This is MIME.\r\n--\r\n"])
    for _ in range(rng.randrange(1, 4)):
        blanks = rng.choice([b"", b" ", b"\t ", b"  "])
        child = _multipart(rng, depth + 1, inner) if depth < 3 and rng.random() < 0.35 else _leaf(rng, inner)
        out += b"--" + boundary + blanks + b"\r\n" + child
    out += b"--" + boundary + b"--" + rng.choice([b"", b" "]) + b"\r\n"
    out += rng.choice([b"", b"epilogue\r\n", b"\r\n", b"\r\n\r\n", b"epi\r\nlogue\r\n"])
    return out


def generated(seed: int) -> bytes:
    rng = random.Random(seed)
    head = b"From: a@example.org\r\nTo: b@example.org\r\nMIME-Version: 1.0\r\n"
    if rng.random() < 0.1:
        head = b"From someone Mon Jan  1 00:00:00 2024\r\n" + head
    if rng.random() < 0.15:
        return head + _leaf(rng, [])
    return head + _multipart(rng, 0, [])


@pytest.mark.parametrize("seed", range(400))
def test_generated_messages_split_as_the_stdlib_parses_them(seed: int) -> None:
    assert assert_same_or_declined(generated(seed))


def mutated(seed: int) -> bytes:
    """A generated message with a few of its lines dropped, doubled or swapped for delimiter-like
    and blank lines: often irregular, so the splitter must either agree or decline."""
    rng = random.Random(seed)
    raw = generated(seed)
    lines = raw.split(b"\r\n")
    delimiters = [line for line in lines if line.startswith(b"--")] or [b"--b"]
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(lines))
        action = rng.randrange(5)
        if action == 0:
            del lines[at]
        elif action == 1:
            lines.insert(at, lines[at])
        elif action == 2:
            lines.insert(at, rng.choice(delimiters) + rng.choice([b"", b"--", b" ", b"-"]))
        elif action == 3:
            lines.insert(at, b"")
        else:
            lines[at] += rng.choice([b"\n", b"\r", b" trailing"])
    return b"\r\n".join(lines)


@pytest.mark.parametrize("seed", range(600))
def test_mutated_messages_split_as_the_stdlib_parses_them_or_are_declined(seed: int) -> None:
    assert_same_or_declined(mutated(seed))


def test_mutations_leave_many_messages_to_the_splitter() -> None:
    """The mutation test above compares trees, not just declines: most mutants are still taken."""
    taken = sum(split_message(mutated(seed)) is not None for seed in range(600))
    assert 200 < taken < 590


# ---- what the splitter leaves to the stdlib parser -----------------------------------------

_PLAIN = (b"To: b@example.org\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
          b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n")


def test_the_plain_message_is_taken() -> None:
    assert assert_same_or_declined(_PLAIN)


@pytest.mark.parametrize("raw", [
    _PLAIN.replace(b"hello\r\n", b"hello\n"),  # a bare LF
    _PLAIN.replace(b"hello", b"hel\rlo"),  # a bare CR
    _PLAIN.replace(b"--b--\r\n", b""),  # no close delimiter
    _PLAIN.replace(b"--b\r\nContent", b"--b\r\n--b\r\nContent"),  # two delimiter lines in a row
    _PLAIN.replace(b'; boundary="b"', b""),  # no boundary
    _PLAIN.replace(b"\r\n\r\n--b", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n--b"),
    _PLAIN.replace(b"multipart/mixed", b"multipart/digest"),
    _PLAIN.replace(b"text/plain", b"message/rfc822"),
    _PLAIN.replace(b"--b\r\n", b"--b--\r\n--b\r\n", 1),  # a close delimiter first
    _PLAIN.replace(b"--b\r\n", b"no delimiter\r\n"),  # no start delimiter
    _PLAIN.replace(b"Content-Type: text/plain\r\n\r\n", b"Content-Type: text/plain\r\njunk\r\n"),
    b"To: b@example.org\r\nSubject: no body separator\r\n",
], ids=["bare-lf", "bare-cr", "no-close", "double-delimiter", "no-boundary", "base64-multipart", "digest",
        "rfc822", "close-first", "no-start", "missing-separator", "headers-only"])
def test_irregular_messages_are_left_to_the_stdlib_parser(raw: bytes) -> None:
    assert split_message(raw) is None


def test_nesting_deeper_than_the_limit_is_left_to_the_stdlib_parser() -> None:
    def nest(level: int) -> bytes:
        if level == 0:
            return b"Content-Type: text/plain\r\n\r\nx\r\n"
        b = b"b%d" % level
        head = b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n'
        return head + b"--" + b + b"\r\n" + nest(level - 1) + b"--" + b + b"--\r\n"
    assert assert_same_or_declined(nest(MAX_DEPTH))
    assert split_message(nest(MAX_DEPTH + 1)) is None


def test_parse_message_gives_the_same_findings_either_way() -> None:
    """A declined message still parses (the stdlib way); a taken one gives the same attachments."""
    limits = ScanSettings()
    for raw in (_PLAIN, _PLAIN.replace(b"hello\r\n", b"hello\n"), generated(7)):
        parsed = parse_message(raw, limits)
        assert parsed.msg is not None
        assert tree(parsed.msg) == tree(stdlib(raw))


def test_a_parsed_message_keeps_the_header_bytes_only() -> None:
    """A scan worker lets go of a large message's bytes once it is parsed (engine.decide): the
    parsed message keeps the header block's bytes, not the whole message's."""
    raw = generated(3)
    parsed = parse_message(raw, ScanSettings())
    whole = split_header_block(raw)
    assert parsed.headers.raw == raw[:whole.body_at]
    assert parsed.headers.body == b""
    assert parsed.headers.fields == whole.fields
    assert parsed.headers.newline == whole.newline
