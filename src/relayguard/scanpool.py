"""Where the engine runs: a pool of worker processes, off the event loop and off its GIL.

Parsing and scanning are pure-Python CPU work (tens of ms for a large attachment, seconds for a
30 MB one). In a thread they would hold the GIL the event loop needs to greet other clients;
in worker processes they also use every core. The pool is made with ``forkserver`` so workers
start from a clean process (no copies of the relay's threads or sockets) with the engine
preloaded. ``workers = 0`` runs the engine in a thread instead (tests, tiny deployments).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from relayguard.config import ScanSettings
from relayguard.decision import Decision, Envelope, Submitter
from relayguard.errors import ScanUnavailableError
from relayguard.log import get_logger
from relayguard.policy import engine
from relayguard.policy.loader import LoadedPolicy

log = get_logger("relayguard.scan")

_PRELOAD = ["relayguard.policy.engine", "relayguard.detect", "relayguard.extract"]


def decide_timed(raw: bytes, envelope: Envelope, submitter: Submitter, policy: LoadedPolicy,
                 limits: ScanSettings) -> tuple[Decision, float]:
    """The engine's decision and the CPU seconds it took (runs in a worker)."""
    started = time.perf_counter()
    decision = engine.decide(raw, envelope, submitter, policy, limits=limits)
    return decision, time.perf_counter() - started


class ScanPool:
    def __init__(self, settings: ScanSettings) -> None:
        self.settings = settings
        self._pool: Executor | None = self._new_pool() if settings.workers else None

    def _new_pool(self) -> Executor:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ProcessPoolExecutor(max_workers=self.settings.workers, mp_context=ctx)

    async def decide(self, raw: bytes, envelope: Envelope, submitter: Submitter,
                     policy: LoadedPolicy) -> tuple[Decision, float]:
        loop = asyncio.get_running_loop()
        # The engine has its own time budget; this bound only catches a worker that hangs.
        bound = self.settings.time_budget * 3 + 30
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, decide_timed, raw, envelope, submitter, policy,
                                     self.settings), bound)
        except BrokenProcessPool as exc:
            log.error("scan.worker_died", note="pool restarted; the client is asked to retry")
            self._restart()
            raise ScanUnavailableError("scan worker died") from exc
        except TimeoutError as exc:
            log.error("scan.worker_hung", bound_s=bound)
            raise ScanUnavailableError("scan took too long") from exc

    def _restart(self) -> None:
        old, self._pool = self._pool, self._new_pool()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
