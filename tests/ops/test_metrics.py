"""/metrics, /healthz and /readyz on a running relay's web listener, checked against what was sent."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiosmtplib
import httpx
from prometheus_client.parser import text_string_to_metric_families

from relayguard.app import Relay
from relayguard.store import State
from tests.conftest import Sink

FROM = "reception@oakfield-surgery.nhs.uk"
PLAIN = (b"From: reception@oakfield-surgery.nhs.uk\r\nTo: ward7.admin@nhs.net\r\nSubject: Clinic\r\n\r\n"
         b"The clinic moves to Thursday.\r\n")
# An NHS number to a free-mail address: the default policy holds it.
RISKY = (b"From: reception@oakfield-surgery.nhs.uk\r\nTo: someone@gmail.com\r\nSubject: Referral\r\n\r\n"
         b"Patient NHS 436 614 1345 seen today.\r\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _send(relay: Relay, raw: bytes, rcpt: str) -> None:
    await aiosmtplib.send(raw, sender=FROM, recipients=[rcpt], hostname="127.0.0.1",
                          port=relay.smtp_port, start_tls=False)


async def _settled(relay: Relay) -> None:
    """Wait until nothing is queued any more (every outcome committed)."""
    while (await relay.store.queue_stats())["counts"].get(State.QUEUED.value):
        await asyncio.sleep(0.05)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the text exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _web_relay(relay_factory: Any) -> tuple[Relay, str]:
    port = _free_port()
    relay = await relay_factory(web={"enabled": True, "listen": f"127.0.0.1:{port}",
                                     "secret_key": "test-secret"})
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(100):  # uvicorn starts in a background task
            try:
                await client.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    return relay, base


async def test_metrics_match_what_was_sent(relay_factory: Any, sink: Sink) -> None:
    """After 3 delivered, 1 bounced and 1 held message, /metrics reports exactly those figures."""
    sink.refuse = {"gone@nhs.net": "550 5.1.1 no such user"}
    relay, base = await _web_relay(relay_factory)
    for _ in range(3):
        await _send(relay, PLAIN, "ward7.admin@nhs.net")
    await _send(relay, PLAIN, "gone@nhs.net")
    await _send(relay, RISKY, "someone@gmail.com")
    await _settled(relay)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("relayguard_accepted_total", ())] == 5
    assert got[("relayguard_held_total", ())] == 1
    assert got[("relayguard_rejected_total", ())] == 0
    assert got[("relayguard_delivered_total", (("origin", "client"),))] == 3
    assert got[("relayguard_delivered_total", (("origin", "dsn"),))] == 1
    assert got[("relayguard_bounced_total", (("origin", "client"), ("reason", "5xx")))] == 1
    assert got[("relayguard_decision_seconds_count", ())] == 5
    assert got[("relayguard_accept_seconds_count", ())] == 5
    assert got[("relayguard_messages", (("origin", "client"), ("state", "delivered")))] == 3
    assert got[("relayguard_messages", (("origin", "client"), ("state", "held")))] == 1
    assert got[("relayguard_messages", (("origin", "client"), ("state", "bounced")))] == 1
    assert got[("relayguard_queue_depth", ())] == 0
    assert got[("relayguard_released_messages", ())] == 0
    assert got[("relayguard_store_up", ())] == 1
    assert "gmail" not in response.text and "oakfield" not in response.text  # figures, not names


async def test_health_and_readiness(relay_factory: Any, sink: Sink) -> None:
    """/healthz is 200; /readyz is 200 with store and upstream up and 503 naming the upstream when down."""
    _, base = await _web_relay(relay_factory)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}
        ready = await client.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "store": "ok", "upstream": "ok"}
        await sink.stop()
        down = await client.get(f"{base}/readyz")
    assert down.status_code == 503
    assert down.json()["store"] == "ok" and down.json()["upstream"].startswith("unreachable")
