"""The policy at work in a running relay: every corpus case over real SMTP, and live reload."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import aiosmtplib
import pytest
import yaml

from relayguard import audit
from relayguard.store import State
from tests.conftest import ROOT, Sink

CORPUS = ROOT / "tests" / "corpus"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text())


def envelope_of(raw: bytes, extra: list[str]) -> tuple[str, list[str]]:
    msg = message_from_bytes(raw, policy=default_policy)
    visible = [a.addr_spec for h in ("To", "Cc") for v in msg.get_all(h) or [] for a in v.addresses]
    return msg["From"].addresses[0].addr_spec, visible + extra


async def smtp_send(port: int, raw: bytes, mail_from: str, rcpts: list[str]) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="client.test")
    async with client:
        _, reply = await client.sendmail(mail_from, rcpts, raw)
    return reply


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0].lower()


async def copies_for(sink: Sink, mail_from: str, rcpts: list[str], timeout: float = 20) -> list[bytes]:
    """Wait until every envelope recipient got a copy from ``mail_from``; the copies' bytes."""
    wanted = {r.lower() for r in rcpts}
    for _ in range(int(timeout / 0.05)):
        mine = [g for g in sink.got if g.mail_from == mail_from]
        if wanted <= {r.lower() for g in mine for r in g.rcpt_tos}:
            return [g.raw for g in mine]
        await asyncio.sleep(0.05)
    raise AssertionError("not every envelope recipient received a copy")


@pytest.mark.parametrize("case", sorted(EXPECTED))
async def test_corpus_case_over_smtp(case: str, relay_factory, sink: Sink) -> None:
    """Each corpus message sent over SMTP gets its expected decision; delivered copies reach
    every envelope recipient, and a rewritten copy shows no recipient's address in its headers."""
    want = EXPECTED[case]
    raw = (CORPUS / f"{case}.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    mail_from, rcpts = envelope_of(raw, want.get("envelope_extra") or [])
    relay = await relay_factory()
    reply = await smtp_send(relay.smtp_port, raw, mail_from, rcpts)
    stored = await relay.store.get(reply.rsplit(" ", 1)[-1])
    assert stored.decision.action.value == want["action"]
    if want["action"] == "hold":
        assert stored.state is State.HELD
        await asyncio.sleep(0.3)
        assert not any(g.mail_from == mail_from for g in sink.got)  # nothing left the building
        return
    copies = await copies_for(sink, mail_from, rcpts)
    if want.get("rewrite"):
        others = {r.lower().encode() for r in rcpts if r.lower() != mail_from.lower()}
        for copy in copies:
            head = header_block(copy)
            leaked = [r for r in others if r in head]
            assert leaked == [], f"{len(leaked)} recipient addresses visible in a rewritten copy"
    else:
        assert copies == [raw]  # delivered unchanged


POLICY_DELIVER = "rules: []\n"
POLICY_REJECT = ("rules:\n  - name: nothing-today\n    then: {action: reject, reply: 'Sending is paused'}\n")
POLICY_BROKEN = "rules:\n  - name: typo\n    then: {acton: reject}\n"

PLAIN = (b"From: reception@oakfield-surgery.nhs.uk\r\nTo: ward7.admin@nhs.net\r\nSubject: hi\r\n\r\n"
         b"Clinic moves to Thursday.\r\n")


async def test_running_relay_picks_up_a_policy_edit(relay_factory, sink: Sink, tmp_path: Path) -> None:
    """A changed policy file takes effect without a restart; a broken edit leaves it in force."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_DELIVER)
    relay = await relay_factory(policy={"path": str(policy), "watch": True})
    first = relay.policy.version
    assert "queued as" in await smtp_send(relay.smtp_port, PLAIN, "reception@oakfield-surgery.nhs.uk",
                                          ["ward7.admin@nhs.net"])
    await asyncio.sleep(0.2)  # let the watcher start watching before the edit
    policy.write_text(POLICY_REJECT)
    for _ in range(100):
        if relay.policy.version != first:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await smtp_send(relay.smtp_port, PLAIN, "reception@oakfield-surgery.nhs.uk", ["ward7.admin@nhs.net"])
    assert refused.value.code == 550 and "Sending is paused" in refused.value.message
    in_force = relay.policy.version
    policy.write_text(POLICY_BROKEN)
    await asyncio.sleep(1.0)  # the watcher's debounce, then a refused reload
    assert relay.policy.version == in_force
    with pytest.raises(aiosmtplib.SMTPDataError):
        await smtp_send(relay.smtp_port, PLAIN, "reception@oakfield-surgery.nhs.uk", ["ward7.admin@nhs.net"])
    reloads = await audit.entries(relay.store, action="policy_reloaded")
    assert [e.details["version"] for e in reloads] == [in_force]
