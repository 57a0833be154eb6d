"""Fuzz parse + decide (+ the rewrite the decision asks for) with random and mutated messages.

``make fuzz`` (or ``python tests/security/fuzz_parse.py --minutes N``) runs hypothesis in rounds
until N minutes have passed, then prints a summary; failing inputs are written to ``--out``.
``tests/security/test_fuzz.py`` runs the same property for a few hundred examples in the suite.

The property, for every input:

- ``policy.decide`` over ``policies/default.yaml`` returns a Decision and raises nothing;
- whatever could not be read (``unscannable``, ``address_defect``, ``header_defect``) is held,
  never delivered, when the message goes outside the practice;
- ``rewrite.apply`` for that decision either returns copies whose header block verifies, or
  refuses with ``RewriteError``; no other exception, no Bcc field in any copy.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT / "src"))

from relayguard import rewrite  # noqa: E402
from relayguard.config import ScanSettings  # noqa: E402
from relayguard.decision import Action, Decision, Envelope, Submitter, SubmitterKind  # noqa: E402
from relayguard.message import split_header_block  # noqa: E402
from relayguard.policy import engine  # noqa: E402
from relayguard.policy.loader import LoadedPolicy, load_policy  # noqa: E402

POLICY = ROOT / "policies" / "default.yaml"
CORPUS = ROOT / "tests" / "corpus"
LIMITS = ScanSettings(time_budget=5.0)
SENDER = Submitter("reception@oakfield-surgery.nhs.uk", SubmitterKind.USER, "127.0.0.1")
ENVELOPE = Envelope("reception@oakfield-surgery.nhs.uk", ("patient@gmail.com", "ward7@nhs.net"))
UNREADABLE = frozenset({"unscannable", "address_defect", "header_defect"})
NHS_NUMBER = b"436 614 1345"  # in the issued range and passes the modulus 11 check


@cache
def default_policy() -> LoadedPolicy:
    return load_policy(POLICY)


@cache
def corpus() -> tuple[bytes, ...]:
    return tuple(p.read_bytes()[:200_000] for p in sorted(CORPUS.glob("*.eml")))


# --- strategies ------------------------------------------------------------------------------

_NEWLINES = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])
_ADDRESS_VALUES = st.sampled_from([
    b"a@gmail.com", b"Alice <alice@example.org>", b"alice@example.org)<bob@example.org>",
    b"=?utf-8?q?a=40b?=c@host.com", b"undisclosed-recipients:;", b"team: x@y.com, z@w.org;",
    b"\"odd, name\" <q@hotmail.co.uk>", b"<@route:x@y.com>", b"x@[127.0.0.1]", b"\xff\xfe@x.com",
    b"a@b.com,\r\n c@d.com", b"(comment) e@f.com", b"", b"<>", b"@", b"a@", b",,,",
])
_HEADER_NAMES = st.sampled_from([
    b"To", b"Cc", b"CC ", b"Bcc", b"Resent-To", b"Resent-Cc", b"Subject", b"From", b"Reply-To",
    b"Content-Type", b"Content-Transfer-Encoding", b"MIME-Version", b"X-Relayguard-Rewrite",
    b"Content-Disposition", b"\x00Bad", b"",
])
_SUBJECTS = st.sampled_from([
    b"=?utf-8?q?hello=0D=0ABcc:_attacker@evil.example?=", b"=?x-unknown?b?////?=",
    b"=?utf-8?b?PHNjcmlwdD4=?=", b"<script>alert(1)</script>", b"clinic\rBcc: x@evil.example",
])
_CTYPES = st.sampled_from([
    b"text/plain", b"text/plain; charset=x-unknown-8", b"text/html; charset=utf-8",
    b"multipart/mixed; boundary=B", b"multipart/mixed", b"multipart/mixed; boundary=\"\"",
    b"message/rfc822", b"application/zip", b"application/pdf; name=a.pdf",
    b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet; name=x.xlsx",
    b"text/csv; name=list.csv",
])
_ENCODINGS = st.sampled_from([b"7bit", b"base64", b"quoted-printable", b"x-uuencode", b"8bit", b"bogus"])
_TRICKS = st.sampled_from([
    b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r", b"\r\n.\r", b"\x00", b"--B\r\n", b"--B--\r\n",
    b"\r\n\r\n", b"Bcc: x@evil.example\r\n", b"=?utf-8?q?=0D=0A?=", b"====", b"\xc3\x28", NHS_NUMBER,
])


@st.composite
def mime_body(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A MIME entity body: text, base64 (valid or not), or nested multiparts (possibly broken)."""
    kind = draw(st.integers(0, 4 if depth < 6 else 2))
    nl = b"\r\n"
    if kind == 0:
        return draw(st.binary(max_size=200)) + draw(st.sampled_from([b"", NHS_NUMBER]))
    if kind == 1:
        return b"Content-Transfer-Encoding: base64" + nl + nl + draw(st.sampled_from(
            [b"NDM2IDYxNCAxMzQ1", b"!!!not base64!!!", b"NDM2\r\nIDYx", b"===="]))
    if kind == 2:
        head = draw(st.sampled_from([b"Content-Type: text/plain; charset=klingon", b"X: y"]))
        return head + nl + nl + NHS_NUMBER
    parts = draw(st.lists(mime_body(depth + 1), max_size=4))
    boundary = draw(st.sampled_from([b"B", b"B1", b"", b"--"]))
    body = b"".join(b"--" + boundary + nl + b"Content-Type: " + draw(_CTYPES) + nl + nl + p + nl
                    for p in parts)
    close = draw(st.booleans())
    head = b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"" + nl + nl
    return head + body + (b"--" + boundary + b"--" + nl if close else b"")


@st.composite
def structured_message(draw: st.DrawFn) -> bytes:
    """A message built from header and MIME pieces that parsers are known to trip over."""
    nl = draw(_NEWLINES)
    headers: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(_HEADER_NAMES)
        value = draw(st.one_of(_ADDRESS_VALUES, _SUBJECTS, _CTYPES, _ENCODINGS,
                               st.binary(max_size=60)))
        headers.append(name + b": " + value)
    if draw(st.booleans()):
        headers.append(b"Subject: " + draw(_SUBJECTS))
    body = draw(mime_body())
    raw = nl.join(headers) + nl + nl + body
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(raw)))
        raw = raw[:pos] + draw(_TRICKS) + raw[pos:]
    return raw


@st.composite
def mutated_corpus(draw: st.DrawFn) -> bytes:
    """A real corpus message with bytes flipped, slices dropped or repeated, tricks inserted."""
    raw = bytearray(draw(st.sampled_from(corpus())))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == 0 and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == 1:
            end = draw(st.integers(pos, min(len(raw), pos + 4096)))
            del raw[pos:end]
        elif op == 2:
            end = draw(st.integers(pos, min(len(raw), pos + 512)))
            raw[pos:pos] = raw[pos:end] * draw(st.integers(1, 8))
        else:
            raw[pos:pos] = draw(_TRICKS)
    return bytes(raw)


messages = st.one_of(st.binary(max_size=2000), structured_message(), mutated_corpus())


# --- the property ----------------------------------------------------------------------------

def check(raw: bytes) -> Decision:
    """Run parse + decide + rewrite on ``raw``; raise AssertionError when a safety property fails."""
    decision = engine.decide(raw, ENVELOPE, SENDER, default_policy(), limits=LIMITS)
    assert isinstance(decision, Decision)
    unreadable = {f.kind for f in decision.findings} & UNREADABLE
    if unreadable:
        assert decision.action is not Action.DELIVER, f"{sorted(unreadable)} delivered: {decision.rules}"
    try:
        copies = rewrite.apply(raw, decision, ENVELOPE)
    except rewrite.RewriteError:
        return decision  # refused rather than forwarded: the delivery worker retries, then alerts
    for env, data in copies:
        assert set(env.rcpt_tos) <= set(ENVELOPE.rcpt_tos), "rewrite added a recipient"
        names = {f.lname for f in split_header_block(data).fields}
        assert not names & {"bcc", "resent-bcc"}, "a Bcc field was forwarded"
        if decision.rewrite is not None:
            assert "cc" not in names, "a recipient list survived the rewrite"
    return decision


# --- the command-line driver -----------------------------------------------------------------

@dataclass
class Tally:
    examples: int = 0
    failures: dict[str, bytes] = field(default_factory=dict)  # first line of error -> input
    slowest: float = 0.0


def _round(tally: Tally, examples: int, deadline: float) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(messages)
    def prop(raw: bytes) -> None:
        if time.monotonic() > deadline:
            return
        tally.examples += 1
        started = time.perf_counter()
        try:
            check(raw)
        except Exception as exc:
            line = traceback.format_exception_only(exc)[-1].strip()[:200]
            tally.failures.setdefault(f"{type(exc).__name__}: {line}", raw)
        tally.slowest = max(tally.slowest, time.perf_counter() - started)

    prop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "fuzz-failures")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # pypdf & co. log every broken input they are shown
    started = time.monotonic()
    deadline = started + args.minutes * 60
    tally = Tally()
    rounds = 0
    while time.monotonic() < deadline:
        _round(tally, 500, deadline)
        rounds += 1
        elapsed = time.monotonic() - started
        print(f"[{elapsed:7.0f}s] examples={tally.examples} failures={len(tally.failures)}", flush=True)
    for reason, raw in tally.failures.items():
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{hashlib.sha256(raw).hexdigest()[:16]}.eml"
        path.write_bytes(raw)
        print(f"FAILURE {reason}\n  input: {path}")
    print(f"fuzz_parse: {tally.examples} examples in {time.monotonic() - started:.0f}s "
          f"({rounds} rounds), {len(tally.failures)} distinct failures, "
          f"slowest example {tally.slowest:.2f}s")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
