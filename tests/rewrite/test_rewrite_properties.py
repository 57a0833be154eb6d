"""Property: after a rewrite no recipient can read another outside recipient's address."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.decision import Decision, Envelope, Rewrite
from relayguard.rewrite import apply

SENDER = "reception@oakfield-surgery.nhs.uk"
DOMAINS = ["gmail.com", "GMAIL.COM", "Hotmail.co.uk", "bücher.de", "council.gov.uk", "nhs.net"]
HEADERS = ["To", "Cc", "CC", "cc", "Bcc", "Resent-To", "Resent-Cc", "CC "]
NAMES = st.sampled_from(["", "Ann Smith", '"Smith, Ann"', "=?utf-8?q?J=C3=B6rg?=", "=?utf-8?b?w5xsaQ==?="])


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A header block with recipient lists in any mix of header names, forms and groups."""
    n = draw(st.integers(min_value=1, max_value=12))
    addrs = [f"rcpt{i}x@{draw(st.sampled_from(DOMAINS))}" for i in range(n)]
    lines = [f"From: Reception <{SENDER}>", "Subject: =?utf-8?q?Clinic=0D=0ACc:_victim@evil.example?="]
    pending = list(addrs)
    while pending:
        k = draw(st.integers(min_value=1, max_value=len(pending)))
        chunk, pending = pending[:k], pending[k:]
        items = [f"{name} <{a}>" if (name := draw(NAMES)) else a for a in chunk]
        value = ",\r\n ".join(items) if draw(st.booleans()) else ", ".join(items)
        if draw(st.booleans()):
            value = f"Group: {value};"
        lines.append(f"{draw(st.sampled_from(HEADERS))}: {value}")
    lines.append("X-Mailer: test")
    return ("\r\n".join(lines) + "\r\n\r\nHello all.\r\n").encode(), addrs


def _header(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode().lower()


def _outside(addrs: list[str]) -> list[str]:
    return [a.lower() for a in addrs]


@settings(max_examples=150, deadline=None)
@given(messages(), st.booleans())
def test_bcc_copy_shows_no_recipient_and_keeps_envelope(case: tuple[bytes, list[str]], extra: bool) -> None:
    """After bcc the one copy, which everyone receives, names no recipient and the envelope is unchanged."""
    raw, addrs = case
    rcpts = (*addrs, "hidden9x@aol.com") if extra else tuple(addrs)
    env = Envelope(SENDER, rcpts)
    [(got_env, out)] = apply(raw, Decision(rewrite=Rewrite.BCC, rules=("r",)), env)
    assert got_env == env
    head = _header(out)
    assert not [a for a in _outside(list(rcpts)) if a in head]
    names = [line.split(":", 1)[0].strip() for line in head.split("\r\n") if line[:1] not in (" ", "\t")]
    assert names.count("to") == 1
    assert not {"cc", "bcc", "resent-to", "resent-cc"} & set(names)
    assert out.endswith(b"\r\n\r\nHello all.\r\n")


@settings(max_examples=150, deadline=None)
@given(messages())
def test_individual_copies_name_only_their_own_recipient(case: tuple[bytes, list[str]]) -> None:
    """Each individual copy's header names nobody but that copy's own recipient; all are reached."""
    raw, addrs = case
    env = Envelope(SENDER, (*addrs, "hidden9x@aol.com"))
    copies = apply(raw, Decision(rewrite=Rewrite.INDIVIDUAL), env)
    reached = [r for e, _ in copies for r in e.rcpt_tos]
    assert sorted(reached) == sorted(env.rcpt_tos)
    for e, out in copies:
        own = {r.lower() for r in e.rcpt_tos} if len(e.rcpt_tos) == 1 else set()
        head = _header(out)
        assert not [a for a in _outside(list(env.rcpt_tos)) if a in head and a not in own]
