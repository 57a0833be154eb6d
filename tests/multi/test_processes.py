"""``smtp.processes: 2``: two relay processes on one port under a supervisor, on both backends.
Everything accepted is delivered once, a killed process is replaced and its mail still goes,
SIGTERM stops them all, and a process that cannot start stops the whole serve."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Sink
from tests.multi.test_two_instances import message, send_all
from tests.relay.test_crash import RelayProcess

pytestmark = pytest.mark.slow


def _children(pid: int) -> set[int]:
    """The supervisor's children: the relay processes (their scan workers are grandchildren)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _relay(store_url: str, sink: Sink, tmp_path: Path) -> RelayProcess:
    relay = RelayProcess(store_url=store_url, sink=sink, log=tmp_path / "serve.log")
    relay.env.update({"RELAYGUARD_SMTP__PROCESSES": "2", "RELAYGUARD_LOG__LEVEL": "INFO",
                      "RELAYGUARD_LOG__FORMAT": "json", "RELAYGUARD_SCAN__WORKERS": "0"})
    return relay


async def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _listening(log: Path) -> int:
    return log.read_text().count('"relay.started"') if log.exists() else 0


def _accepted_by(log: Path) -> Counter[int]:
    """Which process answered each accepted message (process=N is bound in every log line).
    Read object by object: two processes append to one file, and a line may hold two objects."""
    text, decoder, pos = log.read_text(), json.JSONDecoder(), 0
    counts: Counter[int] = Counter()
    while (start := text.find("{", pos)) >= 0:
        try:
            entry, pos = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if entry.get("event") == "smtp.transaction":
            counts[entry.get("process", -1)] += 1
    return counts


async def test_two_processes_share_the_port_and_deliver_everything_once(
        store_url: str, sink: Sink, tmp_path: Path) -> None:
    relay = _relay(store_url, sink, tmp_path)
    await relay.start()
    try:
        await _until(lambda: _listening(relay.log) == 2)
        accepted: list[int] = []
        await asyncio.gather(*(send_all(relay.port, list(range(k, 200, 20)), accepted) for k in range(20)))
        assert sorted(accepted) == list(range(200))
        got = await sink.wait_for(200, timeout=60)
        await asyncio.sleep(0.5)  # a second copy of any message would arrive meanwhile
        assert sorted(g.raw for g in sink.got) == sorted(message(i) for i in range(200))
        assert len(got) == 200
    finally:
        await relay.kill(signal.SIGTERM)
    by_process = _accepted_by(relay.log)
    assert set(by_process) == {0, 1} and sum(by_process.values()) == 200


async def test_a_killed_process_is_replaced_and_its_mail_delivered(
        store_url: str, sink: Sink, tmp_path: Path) -> None:
    sink.delay = 0.05  # mail is still queued in the processes when one is killed
    relay = _relay(store_url, sink, tmp_path)
    relay.env["RELAYGUARD_DELIVERY__LEASE"] = "PT3S"
    await relay.start()
    assert relay.proc is not None
    try:
        await _until(lambda: _listening(relay.log) == 2)
        accepted: list[int] = []
        await asyncio.gather(*(send_all(relay.port, list(range(k, 60, 10)), accepted) for k in range(10)))
        before = _children(relay.proc.pid)
        os.kill(min(before), signal.SIGKILL)
        await _until(lambda: len(_children(relay.proc.pid) - before) == 1)  # a successor started
        # At least once: what the killed one sent but had not recorded may come twice.
        await _until(lambda: {g.raw for g in sink.got} >= {message(i) for i in accepted}, timeout=60)
        assert relay.proc.poll() is None  # the supervisor lives on
    finally:
        await relay.kill(signal.SIGTERM)
    assert "supervisor.child_died" in relay.log.read_text()


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


async def test_sigterm_stops_every_process(store_url: str, sink: Sink, tmp_path: Path) -> None:
    """Relays, their scan pools' forkservers and workers all exit, and cleanly: no semaphore
    is left for multiprocessing's resource tracker to call leaked."""
    relay = _relay(store_url, sink, tmp_path)
    relay.env["RELAYGUARD_SCAN__WORKERS"] = "1"
    await relay.start()
    assert relay.proc is not None
    await _until(lambda: _listening(relay.log) == 2)
    # Two relays, each with a forkserver, its worker and a resource tracker.
    await _until(lambda: len(_descendants(relay.proc.pid)) >= 8)
    processes = _descendants(relay.proc.pid)
    relay.proc.send_signal(signal.SIGTERM)
    await _until(lambda: relay.proc.poll() is not None)
    assert relay.proc.returncode == 0
    for pid in processes:
        await _until(lambda pid=pid: not Path(f"/proc/{pid}").exists()  # type: ignore[misc]
                     or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], timeout=10)
    assert "leaked" not in relay.log.read_text()


async def test_a_process_that_cannot_start_stops_the_serve(
        store_url: str, sink: Sink, tmp_path: Path) -> None:
    relay = _relay(store_url, sink, tmp_path)
    with socket.socket() as taken:  # the port is held by someone else, without SO_REUSEPORT
        taken.bind(("127.0.0.1", relay.port))
        taken.listen()
        run = await asyncio.to_thread(subprocess.run, [str(ROOT / ".venv/bin/relayguard"), "serve"],
                                      env=relay.env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "cannot start" in run.stderr
