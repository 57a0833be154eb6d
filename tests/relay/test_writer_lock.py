"""SQLite's writers queue on one lock across processes (``smtp.processes``, the CLI): an flock
of ``<db>-writer.lock`` taken after the in-process queue. Two lock objects on one file stand in
for two processes (flock locks belong to each open of the file)."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path

import pytest

from relayguard.store import sqlite
from relayguard.store.sqlite import WriterLock


async def test_a_second_writer_waits_for_the_first_and_then_goes(tmp_path: Path) -> None:
    one, two = WriterLock(tmp_path / "q.db"), WriterLock(tmp_path / "q.db")
    order: list[str] = []

    async def hold() -> None:
        async with one:
            order.append("one in")
            await asyncio.sleep(0.3)
            order.append("one out")

    async def wait() -> None:
        await asyncio.sleep(0.05)  # one holds the lock by now
        async with two:
            order.append("two in")

    await asyncio.wait_for(asyncio.gather(hold(), wait()), 5)
    assert order == ["one in", "one out", "two in"]
    one.close()
    two.close()


async def test_a_cancelled_waiter_leaves_the_lock_free(tmp_path: Path) -> None:
    one, two, three = (WriterLock(tmp_path / "q.db") for _ in range(3))
    async with one:
        waiter = asyncio.create_task(two.__aenter__())
        await asyncio.sleep(0.1)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    await asyncio.sleep(0.1)  # the abandoned thread got the lock and gave it back
    async with asyncio.timeout(2):
        async with three:
            pass
    for lock in (one, two, three):
        lock.close()


async def test_a_holder_that_never_lets_go_does_not_hang_the_next_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process frozen while holding the file lock (stopped, or its loop blocked) leaves the
    decision to SQLite's own locking after a bounded wait, instead of hanging for ever."""
    monkeypatch.setattr(sqlite, "FILE_LOCK_WAIT_S", 0.2)
    stuck, lock = WriterLock(tmp_path / "q.db"), WriterLock(tmp_path / "q.db")
    async with stuck:
        async with asyncio.timeout(2), lock:
            entered = True
        with open(tmp_path / "q.db-writer.lock", "rb") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held by ``stuck``
    assert entered
    await asyncio.sleep(0.1)  # the abandoned thread got the lock when ``stuck`` let go, and gave it back
    with open(tmp_path / "q.db-writer.lock", "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    stuck.close()
    lock.close()


async def test_in_memory_databases_need_no_lock_file(tmp_path: Path) -> None:
    lock = WriterLock(None)
    async with lock:
        pass
    assert list(tmp_path.iterdir()) == []


async def test_a_one_trip_commit_waits_in_its_thread_for_another_process(tmp_path: Path) -> None:
    """held() (the database thread's half of a one-trip commit) waits for the file lock while
    another process holds it, and lets it go on leaving."""
    one, two = WriterLock(tmp_path / "q.db"), WriterLock(tmp_path / "q.db")
    order: list[str] = []

    def in_thread() -> None:
        with two.held():
            order.append("two in")

    async with one:
        waiting = asyncio.get_running_loop().run_in_executor(None, in_thread)
        await asyncio.sleep(0.2)
        order.append("one out")
    await asyncio.wait_for(waiting, 5)
    assert order == ["one out", "two in"]
    with open(tmp_path / "q.db-writer.lock", "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go
    one.close()
    two.close()


async def test_a_one_trip_commit_gives_up_waiting_for_a_stuck_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "FILE_LOCK_WAIT_S", 0.2)
    stuck, lock = WriterLock(tmp_path / "q.db"), WriterLock(tmp_path / "q.db")
    entered: list[bool] = []

    def in_thread() -> None:
        with lock.held():
            entered.append(True)

    async with stuck:
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, in_thread), 5)
        with open(tmp_path / "q.db-writer.lock", "rb") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held by ``stuck``
    assert entered == [True]
    stuck.close()
    lock.close()
