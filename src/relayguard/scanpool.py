"""Where the engine runs: a pool of worker processes, off the event loop and off its GIL.

Parsing and scanning are pure-Python CPU work (tens of ms for a large attachment, seconds for a
30 MB one). In a thread they would hold the GIL the event loop needs to greet other clients;
in worker processes they also use every core. The pool is made with ``forkserver`` so workers
start from a clean process (no copies of the relay's threads or sockets) with the engine
preloaded. ``workers = 0`` runs the engine in a thread instead (tests, tiny deployments).

A worker is not free: the message and the policy are pickled through pipes and a semaphore, by
threads of the relay that contend for its GIL. Measured at 100 KiB (a letter with a text
attachment) that is ~2 ms of CPU a message between the two processes, against ~1 ms for the
decision itself. So a message up to ``scan.inline_max_bytes`` is first decided in the event
loop, within a short slice of time (:data:`INLINE_SLICE_S`) and refusing the formats whose cost
its size does not bound (archives, office documents, PDF, tag-heavy HTML: see
``extract.dispatch``); one that needs more raises ``NeedsWorkerError`` and is decided again, from
the start, in a worker. The decision is the same either way: only where it is made differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from relayguard.config import ScanSettings
from relayguard.decision import Decision, Envelope, Submitter
from relayguard.errors import ScanUnavailableError
from relayguard.extract.base import NeedsWorkerError
from relayguard.log import get_logger
from relayguard.malloc import return_large_buffers
from relayguard.message import header_end
from relayguard.policy import engine
from relayguard.policy.loader import LoadedPolicy

log = get_logger("relayguard.scan")

_PRELOAD = ["relayguard.policy.engine", "relayguard.detect", "relayguard.extract"]
# How long an inline decision may hold the event loop before it is abandoned for a worker: ten
# 100 KiB messages' worth. Other sessions wait at most this (plus one step of the scan, which
# the size bound keeps to a few ms).
INLINE_SLICE_S = 0.01
# The header block of an inline message is at most this: a long To/Cc goes through the address
# parser (~100 us an address) before the scan and its slice begin.
INLINE_MAX_HEADER_BYTES = 16 * 1024
# Messages from this size on reach a worker through a file, not the pool's pipe: pickled, a
# 25 MiB message is one more copy in the relay and, while it is read, two in the worker.
SPOOL_MIN_BYTES = 1024 * 1024
# How long close() waits for the workers to stop before it kills them. An idle worker stops in
# milliseconds; one still scanning has nothing worth waiting for (its session is gone).
CLOSE_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Spooled:
    """A message waiting for a worker in a private temporary file (mode 0600), which the relay
    deletes as soon as the decision is back (or the worker failed)."""

    path: str

    @classmethod
    def write(cls, raw: bytes) -> Spooled:
        fd, path = tempfile.mkstemp(prefix="relayguard-scan-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        except BaseException:
            os.unlink(path)
            raise
        return cls(path)

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()  # one buffer of the file's size

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def decide_timed(raw: bytes | Spooled, envelope: Envelope, submitter: Submitter,
                 policy: LoadedPolicy, limits: ScanSettings, *,
                 inline_slice: float | None = None) -> tuple[Decision, float]:
    """The engine's decision and the CPU seconds it took (in a worker, or inline)."""
    started = time.perf_counter()
    # No local for the bytes read back: engine.decide then holds the only reference, and lets
    # go of them once they are parsed, before the scan makes its own copies.
    decision = engine.decide(raw.read() if isinstance(raw, Spooled) else raw, envelope, submitter,
                             policy, limits=limits, inline_slice=inline_slice)
    return decision, time.perf_counter() - started


class ScanPool:
    def __init__(self, settings: ScanSettings) -> None:
        self.settings = settings
        # A message scanned while another is gets no detection helper: the workers already
        # keep the cores busy (see relayguard.detect.parallel).
        self._crowded = settings.model_copy(update={"detect_helper": False})
        self._scanning = 0
        self._pool: Executor | None = self._new_pool() if settings.workers else None

    def _new_pool(self) -> Executor:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ProcessPoolExecutor(max_workers=self.settings.workers, mp_context=ctx,
                                   initializer=return_large_buffers)

    async def warm(self) -> None:
        """Start every worker now: the first large message should not wait for processes to be
        forked and the engine imported (about a second), nor pay for it in its latency."""
        if self._pool is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(self._pool, time.sleep, 0.05)
                                   for _ in range(self.settings.workers)))
        except BrokenProcessPool:
            log.error("scan.worker_died", note="pool restarted at start-up")
            self._restart()

    def _inline(self, raw: bytes) -> bool:
        return len(raw) <= self.settings.inline_max_bytes and header_end(raw) <= INLINE_MAX_HEADER_BYTES

    async def decide(self, raw: bytes, envelope: Envelope, submitter: Submitter,
                     policy: LoadedPolicy) -> tuple[Decision, float]:
        if self._inline(raw):
            try:
                return decide_timed(raw, envelope, submitter, policy, self._crowded,
                                    inline_slice=INLINE_SLICE_S)
            except NeedsWorkerError:
                pass  # started again, from the beginning, where it may take its time
        loop = asyncio.get_running_loop()
        # The engine has its own time budget; this bound only catches a worker that hangs.
        bound = self.settings.time_budget * 3 + 30
        limits = self._crowded if self._scanning else self.settings
        self._scanning += 1
        spooled = None
        try:
            spooled = await self._spool(raw)
            async with asyncio.timeout(bound):  # not wait_for(): it can lose a cancel on 3.11
                return await loop.run_in_executor(self._pool, decide_timed, spooled or raw, envelope,
                                                  submitter, policy, limits)
        except BrokenProcessPool as exc:
            log.error("scan.worker_died", note="pool restarted; the client is asked to retry")
            self._restart()
            raise ScanUnavailableError("scan worker died") from exc
        except TimeoutError as exc:
            log.error("scan.worker_hung", bound_s=bound)
            raise ScanUnavailableError("scan took too long") from exc
        finally:
            self._scanning -= 1
            if spooled is not None:
                spooled.remove()

    async def _spool(self, raw: bytes) -> Spooled | None:
        if self._pool is None or len(raw) < SPOOL_MIN_BYTES:
            return None
        try:
            return await asyncio.to_thread(Spooled.write, raw)
        except OSError as exc:  # a full or read-only temp dir: the pipe still works
            log.warning("scan.spool_failed", error=str(exc)[:200])
            return None

    def _restart(self) -> None:
        old, self._pool = self._pool, self._new_pool()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the workers and wait (in a thread, bounded) until they have exited.

        Not ``shutdown(wait=False)`` and return: a relay process forked by the supervisor ends
        with multiprocessing's exit hooks, which close the pool's call queue. If that comes
        before the pool's manager thread has sent each worker its stop sentinel, the sentinel
        is never written, the worker waits for it forever and the exit waits for the worker.
        """
        pool, self._pool = self._pool, None
        if not isinstance(pool, ProcessPoolExecutor):
            return
        stopping = asyncio.ensure_future(
            asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True))
        done, _ = await asyncio.wait({stopping}, timeout=CLOSE_GRACE_S)
        if done:
            return
        log.warning("scan.workers_killed", note=f"not stopped within {CLOSE_GRACE_S:g} s")
        # No public way to reach them; shutdown() empties the map if it ends meanwhile.
        for process in list((pool._processes or {}).values()):
            process.kill()
        await stopping  # a killed worker breaks the pool: shutdown returns at once
