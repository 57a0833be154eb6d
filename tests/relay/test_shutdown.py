"""Stopping the relay while mail is being sent: prompt, and nothing is recorded as sent that the
upstream did not confirm (the lease runs out and the message is sent again)."""

from __future__ import annotations

import asyncio
import time

from relayguard.delivery import _cancelled
from relayguard.store import State, open_store
from tests.conftest import Sink
from tests.relay.test_relay_core import send


async def test_stopping_while_the_upstream_is_slow_to_answer_is_prompt(relay_factory, sink: Sink,
                                                                      store_url: str) -> None:
    sink.delay = 60  # the upstream takes a minute to answer DATA
    relay = await relay_factory(upstream={"timeout": 120})
    _, reply = await send(relay.smtp_port)
    queue_id = reply.rsplit(" ", 1)[-1]
    await asyncio.sleep(1)  # handed over at once: the sender now waits for the upstream's reply
    started = time.monotonic()
    await relay.stop()
    # Before: a QUIT on the connection (read as more of the message) waited for its reply
    # until stop() gave up on the delivery task after 10 s.
    assert time.monotonic() - started < 5
    store = open_store(store_url)
    try:
        message = await store.get(queue_id, with_raw=False)
    finally:
        await store.close()
    assert (message.state, message.attempts) == (State.QUEUED, 0)
    assert sink.got == []


async def test_a_sender_that_loses_its_cancel_is_cancelled_again() -> None:
    """asyncio.wait_for() on Python 3.11 can swallow a cancel (aiosmtplib waits with it)."""
    lost = 0

    async def sender() -> None:
        nonlocal lost
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost += 1  # what a lost cancel looks like from outside: the task goes on
        await asyncio.sleep(3600)

    task = asyncio.create_task(sender())
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancelled([task]), 10)
    assert task.cancelled() and lost == 1
