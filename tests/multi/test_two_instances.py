"""Two ``relayguard serve`` processes sharing one PostgreSQL schema: each message delivered once,
all of them still delivered when one instance is killed, and a quarantine approval made from the
host delivered by whichever instance claims it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosmtplib
import pytest

from relayguard.store import State, open_store
from tests.conftest import PG_URL, Sink
from tests.relay.test_crash import RelayProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(not PG_URL, reason="RELAYGUARD_TEST_PG_URL not set: "
                                 "the two-instance tests need a shared PostgreSQL")]
EXE = str(Path(sys.executable).with_name("relayguard"))
FROM = "reception@oakfield-surgery.nhs.uk"
N = 1000
LEASE = 3  # seconds: a dead instance's claims are picked up after this


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A private schema in the shared database, dropped afterwards."""
    import asyncpg  # noqa: PLC0415

    assert PG_URL is not None
    schema = f"rgmulti_{secrets.token_hex(4)}"
    yield f"{PG_URL}?schema={schema}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pair(pg_url: str, sink: Sink, tmp_path: Path) -> AsyncIterator[list[RelayProcess]]:
    """Instances a and b on their own ports, same store, same upstream sink."""
    relays = []
    for name in ("a", "b"):
        relay = RelayProcess(store_url=pg_url, sink=sink, log=tmp_path / f"{name}.log")
        relay.env.update({"RELAYGUARD_DELIVERY__INSTANCE": name,
                          "RELAYGUARD_DELIVERY__LEASE": f"PT{LEASE}S",  # ISO 8601: env values are strings
                          "RELAYGUARD_WEB__SECRET_KEY": "shared-test-secret",
                          "RELAYGUARD_LOG__LEVEL": "WARNING"})
        relays.append(relay)
    await relays[0].start()  # one at a time: the first one migrates the schema
    await relays[1].start()
    yield relays
    for relay in relays:
        await relay.kill(signal.SIGTERM)


def message(i: int, subject: str = "multi") -> bytes:
    return (f"From: {FROM}\r\nTo: ward7.admin@nhs.net\r\nSubject: {subject} {i}\r\n"
            f"Message-ID: <multi{i}@oakfield-surgery.nhs.uk>\r\n\r\nLetter {i}.\r\n").encode()


async def send_all(port: int, numbers: list[int], accepted: list[int]) -> None:
    """Send ``numbers`` over one connection; those answered 250 go into ``accepted``."""
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=20) as client:
            for i in numbers:
                await client.sendmail(FROM, ["ward7.admin@nhs.net"], message(i))
                accepted.append(i)
    except (aiosmtplib.SMTPException, OSError):
        pass  # the instance was killed: what it did not answer 250 for is the client's to resend


def subjects(sink: Sink) -> Counter[str]:
    seen: Counter[str] = Counter()
    for got in sink.got:
        for line in got.raw.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                seen[line[9:].decode()] += 1
    return seen


async def until(condition: Callable[[], object], timeout: float = 45) -> None:
    """Poll ``condition()`` until true; the test fails on the assertion that follows, not here."""
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.1)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait(), timeout)


async def send_split(relays: list[RelayProcess], accepted: list[int], *, conns: int = 10) -> None:
    """N messages over ``conns`` connections, alternating between the instances."""
    chunks = [list(range(k, N, conns)) for k in range(conns)]
    await asyncio.gather(*(send_all(relays[k % 2].port, chunk, accepted)
                           for k, chunk in enumerate(chunks)))


async def test_each_message_is_delivered_exactly_once(pair: list[RelayProcess], sink: Sink,
                                                      pg_url: str) -> None:
    """1,000 messages split between two instances arrive at the sink 1,000 times, none twice."""
    accepted: list[int] = []
    await send_split(pair, accepted)
    assert sorted(accepted) == list(range(N))
    store = open_store(pg_url)
    try:
        async def delivered() -> int:
            return int((await store.queue_stats())["counts"].get(State.DELIVERED.value, 0))

        for _ in range(450):
            if await delivered() >= N:
                break
            await asyncio.sleep(0.1)
        assert await delivered() == N
    finally:
        await store.close()
    seen = subjects(sink)
    assert len(seen) == N and len(sink.got) == N
    assert max(seen.values()) == 1


async def test_a_killed_instances_mail_is_delivered_by_the_other(pair: list[RelayProcess],
                                                                 sink: Sink) -> None:
    """With instance a SIGKILLed mid-stream, b delivers everything a had answered 250 for."""
    sink.delay = 0.005  # slow enough that a holds claimed, undelivered mail when it dies
    accepted: list[int] = []
    sending = asyncio.create_task(send_split(pair, accepted))
    await until(lambda: len(sink.got) >= N // 4)
    await pair[0].kill(signal.SIGKILL)
    await sending
    assert len(accepted) >= N // 2  # b took its half at least

    def missing() -> set[int]:
        seen = subjects(sink)
        return {i for i in accepted if f"multi {i}" not in seen}

    await until(lambda: not missing(), timeout=40)
    assert missing() == set()


def cli(pg_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAYGUARD_STORE__URL": pg_url, "COLUMNS": "300"}
    env.pop("RELAYGUARD_CONFIG", None)
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=60, check=False)


async def test_approval_from_the_host_is_delivered_by_another_instance(
        pair: list[RelayProcess], sink: Sink, pg_url: str) -> None:
    """Held on instance a, which then stops; approved with the CLI; delivered by instance b."""
    add = cli(pg_url, "users", "add", "rita", "--role", "reviewer", "--password-stdin",
              stdin="long enough password\n")
    assert add.returncode == 0, add.stderr
    risky = (f"From: {FROM}\r\nTo: someone@gmail.com\r\nSubject: referral for approval\r\n\r\n"
             "Patient NHS 436 614 1345 seen today.\r\n").encode()
    _, reply = await aiosmtplib.send(risky, sender=FROM, recipients=["someone@gmail.com"],
                                     hostname="127.0.0.1", port=pair[0].port, start_tls=False)
    assert "held for review" in reply
    queue_id = reply.rsplit(" ", 1)[-1]
    await pair[0].kill(signal.SIGTERM)
    approve = cli(pg_url, "quarantine", "approve", queue_id, "--as", "rita")
    assert approve.returncode == 0, approve.stderr
    def arrived() -> list[bytes]:  # the sender's held / released notices quote the subject too
        return [g.raw for g in sink.got if g.rcpt_tos == ["someone@gmail.com"]]

    await until(arrived)
    [raw] = arrived()
    assert b"Subject: referral for approval" in raw

