"""Where the engine runs: small text in the event loop, anything else in a worker process."""

from __future__ import annotations

import asyncio
import base64
import email
import io
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from relayguard import scanpool
from relayguard.config import ScanSettings
from relayguard.decision import Action, Decision, Envelope, Submitter, SubmitterKind
from relayguard.detect import scan_message
from relayguard.extract import NeedsWorkerError
from relayguard.policy.loader import load_policy
from relayguard.scanpool import ScanPool

ROOT = Path(__file__).resolve().parents[2]
ENV = Envelope("gp@practice.nhs.uk", ("someone@example.org",))
WHO = Submitter("gp@practice.nhs.uk", SubmitterKind.NETWORK, "127.0.0.1")


def _message(body: bytes, extra_headers: bytes = b"") -> bytes:
    return (b"From: gp@practice.nhs.uk\r\nTo: someone@example.org\r\nSubject: t\r\n" + extra_headers
            + b"\r\n" + body + b"\r\n")


def _spawned(pool: ScanPool) -> int:
    return len(getattr(pool._pool, "_processes", None) or {})


def _attachment(name: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    """A letter with ``data`` attached (base64), as mail clients send it."""
    boundary = b"b0undary"
    return _message(
        b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\nPlease see attached.\r\n"
        + b"--" + boundary + b"\r\nContent-Type: " + ctype.encode() + b"\r\n"
        + b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\""
        + name.encode() + b"\"\r\n\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n")
        + b"--" + boundary + b"--",
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n")


def _zip(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes.txt", data)
    return out.getvalue()


@pytest.mark.parametrize(("raw", "inline"), [
    (_message(b"See you on Tuesday."), True),
    (_message(b"x" * (ScanSettings().inline_max_bytes + 1)), False),
    # An attachment is read inline unless it can inflate (archives, documents, PDF).
    (_attachment("notes.txt", b"Clinic moved to room 4.\r\n" * 400, "text/plain"), True),
    (_attachment("notes.zip", _zip(b"Clinic moved to room 4.\r\n" * 400)), False),
    (_attachment("notes.pdf", b"%PDF-1.7 raw pdf bytes"), False),
    (_message(b"PK\x03\x04 raw archive bytes",
              b"Content-Type: application/zip\r\n"), False),
    # Tag-heavy HTML: the parser's cost is per tag, not per byte.
    (_message(b"<td>x</td>" * 1200, b"Content-Type: text/html\r\n"), False),
    (_message(b"<p>" + b"A short note. " * 800 + b"</p>", b"Content-Type: text/html\r\n"), True),
    # A long header block: its addresses are parsed before the scan's slice begins.
    (_message(b"Hello", b"X-Long: " + b"a" * (scanpool.INLINE_MAX_HEADER_BYTES + 10) + b"\r\n"), False),
])
async def test_small_mail_is_decided_in_the_loop(raw: bytes, inline: bool) -> None:
    """Where a message is decided depends on what it holds; the decision does not."""
    policy = load_policy(ROOT / "policies" / "default.yaml")
    pool, worker = ScanPool(ScanSettings(workers=1)), ScanPool(ScanSettings(workers=1, inline_max_bytes=0))
    try:
        decision, _ = await pool.decide(raw, ENV, WHO, policy)
        assert (_spawned(pool) == 0) is inline
        assert decision == (await worker.decide(raw, ENV, WHO, policy))[0]
        assert _spawned(worker) == 1
    finally:
        await pool.close()
        await worker.close()


def _forwarded(inner: bytes) -> bytes:
    """``inner`` forwarded as a message/rfc822 attachment."""
    return _message(b"--fw\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--fw\r\n"
                    b"Content-Type: message/rfc822\r\n\r\n" + inner + b"--fw--",
                    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"fw\"\r\n")


async def _decided_where(raw: bytes) -> tuple[Decision, bool]:
    """The decision of a pool with one worker (default settings), and whether it used the worker."""
    pool = ScanPool(ScanSettings(workers=1))
    try:
        decision, _ = await pool.decide(raw, ENV, WHO, load_policy(ROOT / "policies" / "default.yaml"))
        return decision, _spawned(pool) == 1
    finally:
        await pool.close()


async def test_an_archive_inside_a_forwarded_message_is_left_to_a_worker() -> None:
    """The refusal reaches through nesting: the extractors that catch every error for a part
    let it pass, so it is never read as a corrupt (unscannable) part."""
    decision, in_worker = await _decided_where(
        _forwarded(_attachment("register.zip", _zip(b"NHS number 436 614 1345\r\n"))))
    assert in_worker
    assert decision.action is Action.HOLD
    assert {f.kind for f in decision.findings} == {"nhs_number"}


async def test_a_message_slower_than_the_slice_is_decided_again_in_a_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanpool, "INLINE_SLICE_S", 0.0)  # every inline scan runs out at once
    decision, in_worker = await _decided_where(_message(b"Patient NHS number 436 614 1345, DOB 01/02/1960."))
    assert in_worker
    assert decision.action is Action.HOLD
    assert "unscannable" not in {f.kind for f in decision.findings}  # not "time budget exceeded"


def test_an_inline_scan_stops_where_a_full_one_goes_on() -> None:
    """Only an inline budget raises NeedsWorkerError; the same message with a full budget
    is simply scanned."""
    msg = email.message_from_bytes(_attachment("notes.zip", _zip(b"Clinic moved.\r\n")))
    with pytest.raises(NeedsWorkerError):
        scan_message(msg, limits=ScanSettings(), inline_slice=1.0)
    assert scan_message(msg, limits=ScanSettings()) == []


async def test_inline_decision_finds_what_a_worker_finds() -> None:
    raw = _message(b"Patient NHS number 436 614 1345, DOB 01/02/1960.")
    policy = load_policy(ROOT / "policies" / "default.yaml")
    inline, worker = ScanPool(ScanSettings(workers=1)), ScanPool(ScanSettings(workers=1, inline_max_bytes=0))
    try:
        here, _ = await inline.decide(raw, ENV, WHO, policy)
        there, _ = await worker.decide(raw, ENV, WHO, policy)
        assert _spawned(inline) == 0 and _spawned(worker) == 1
    finally:
        await inline.close()
        await worker.close()
    assert here.action is there.action is Action.HOLD
    assert here.findings == there.findings


async def test_warm_starts_every_worker_before_the_first_message() -> None:
    pool = ScanPool(ScanSettings(workers=2))
    try:
        await pool.warm()
        assert _spawned(pool) == 2
    finally:
        await pool.close()


async def test_a_message_scanned_while_another_is_gets_no_detection_helper(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The detection helper (detect/parallel.py) is for a core nobody uses: a scan that starts
    while another runs is told not to fork one; the next lone scan may again."""
    allowed: list[bool] = []
    real = scanpool.decide_timed

    def slow(raw: bytes, envelope: Envelope, submitter: Submitter, policy: object,
             limits: ScanSettings) -> object:
        allowed.append(limits.detect_helper)
        time.sleep(0.3)
        return real(raw, envelope, submitter, policy, limits)  # type: ignore[arg-type]

    monkeypatch.setattr(scanpool, "decide_timed", slow)
    pool = ScanPool(ScanSettings(workers=0))  # a thread: the recording above is seen
    policy = load_policy(ROOT / "policies" / "default.yaml")
    big = _message(b"x" * (ScanSettings().inline_max_bytes + 1))  # never inline
    try:
        first = asyncio.create_task(pool.decide(big, ENV, WHO, policy))
        await asyncio.sleep(0.1)
        await pool.decide(big, ENV, WHO, policy)
        await first
        await pool.decide(big, ENV, WHO, policy)
    finally:
        await pool.close()
    assert allowed == [True, False, True]


async def test_a_large_message_reaches_the_worker_through_a_private_file_deleted_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From SPOOL_MIN_BYTES on the message goes by file (not pickled through the pipe): the
    worker decides the same, the file is 0600 while it exists and gone once the answer is back."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(scanpool.tempfile, "tempdir", None)  # re-read TMPDIR
    seen: list[int] = []
    real_write = scanpool.Spooled.write

    def write(raw: bytes) -> scanpool.Spooled:
        spooled = real_write(raw)
        seen.append(Path(spooled.path).stat().st_mode & 0o777)
        return spooled

    monkeypatch.setattr(scanpool.Spooled, "write", staticmethod(write))
    policy = load_policy(ROOT / "policies" / "default.yaml")
    held = _message(b"Patient NHS number 436 614 1345, DOB 01/02/1960.\r\n" + b"x" * 100 + b"\r\n" * 12_000
                    + b"z" * 70 * 15_000)
    assert len(held) >= scanpool.SPOOL_MIN_BYTES
    pool = ScanPool(ScanSettings(workers=1))
    try:
        decision, _ = await pool.decide(held, ENV, WHO, policy)
        small, _ = await pool.decide(_message(b"x" * 20_000), ENV, WHO, policy)
    finally:
        await pool.close()
    assert decision.action is Action.HOLD and {f.kind for f in decision.findings} >= {"nhs_number"}
    assert small.action is Action.DELIVER
    assert seen == [0o600]  # the large one only
    assert list(tmp_path.iterdir()) == []


async def test_no_room_for_the_file_falls_back_to_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(raw: bytes) -> scanpool.Spooled:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scanpool.Spooled, "write", staticmethod(full))
    pool = ScanPool(ScanSettings(workers=1))
    try:
        decision, _ = await pool.decide(_message(b"y" * scanpool.SPOOL_MIN_BYTES), ENV, WHO,
                                        load_policy(ROOT / "policies" / "default.yaml"))
    finally:
        await pool.close()
    assert decision.action is Action.DELIVER


# What a relay process forked by the supervisor does at the end (supervisor.py): close the
# pool, then run multiprocessing's exit hooks and leave with os._exit.
_CLOSE_THEN_EXIT = """
import asyncio, multiprocessing.util, os
from relayguard.config import ScanSettings
from relayguard.scanpool import ScanPool

async def main():
    pool = ScanPool(ScanSettings(workers=1))
    await pool.warm()
    await pool.close()

asyncio.run(main())
multiprocessing.util._exit_function()
os._exit(0)
"""


def test_a_closed_pool_lets_the_process_exit() -> None:
    """Closed with shutdown(wait=False), the exit hooks closed the call queue before the pool had
    sent its idle worker the stop sentinel four times in five; the worker, then the exit, waited
    for ever. Three rounds: each alone would pass by luck one time in five."""
    for _ in range(3):
        child = subprocess.run([sys.executable, "-c", _CLOSE_THEN_EXIT], timeout=30,
                               capture_output=True, text=True)
        assert child.returncode == 0, child.stderr


async def test_a_worker_that_does_not_stop_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanpool, "CLOSE_GRACE_S", 0.5)
    pool = ScanPool(ScanSettings(workers=1))
    assert isinstance(pool._pool, ProcessPoolExecutor)
    busy = pool._pool.submit(time.sleep, 60)
    while not busy.running():  # on its way to the worker: shutdown no longer cancels it
        await asyncio.sleep(0.01)
    (worker,) = pool._pool._processes.values()
    started = time.monotonic()
    await pool.close()
    assert time.monotonic() - started < 10
    assert not worker.is_alive()
    with pytest.raises(BrokenProcessPool):
        busy.result(timeout=0)
