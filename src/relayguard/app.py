"""The composition root: one ``Relay`` wires settings, store, engine, SMTP front, delivery and web.

``relayguard serve`` runs one; the tests run one in-process against a recording upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from sqlalchemy.ext.asyncio import AsyncConnection

from relayguard import alerts, audit, notify, quarantine, retention, rewrite
from relayguard.auth import authenticate
from relayguard.clock import Clock
from relayguard.config import Settings, parse_listen
from relayguard.decision import Action, Decision, Envelope, Submitter
from relayguard.delivery import DeliveryWorker
from relayguard.log import get_logger
from relayguard.metrics import Metrics
from relayguard.policy.loader import LoadedPolicy
from relayguard.policy.reload import PolicyHolder, install_sighup, watch
from relayguard.scanpool import ScanPool
from relayguard.smtp import FrontLimits, RelayHandler, start_server
from relayguard.store import Store, StoredMessage, open_store
from relayguard.upstream import CaptureUpstream, SmtpUpstream, Upstream

log = get_logger("relayguard")

# When the current session's decision started; commit() reads it to time end of DATA -> commit.
_decide_started: contextvars.ContextVar[float | None] = contextvars.ContextVar("decide_started",
                                                                              default=None)
SWEEP_EVERY = 60.0  # seconds between quarantine expiry / reminder sweeps
ALERT_EVERY = 60.0  # seconds between alert checks
PURGE_EVERY = 600.0  # seconds between retention runs


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: it must not take over SIGTERM/SIGINT, which `serve` owns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Relay:
    """One relay instance. ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 upstream_factory: Callable[[], Upstream] | None = None,
                 process_index: int = 0) -> None:
        self.settings = settings
        # One of smtp.processes relays on one port; process 0 alone runs the web UI and the
        # periodic jobs (one sweep, one alert check, one purge per site, not one per process).
        self.process_index = process_index
        self.store: Store = open_store(settings.store.url, clock=clock,
                                       synchronous=settings.store.synchronous)
        self._upstream_factory = upstream_factory
        self.worker: DeliveryWorker | None = None
        self.web: _EmbeddedUvicorn | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.metrics = Metrics()
        # Loaded here, not in start(): a broken policy stops `serve` before it listens.
        self.policy = PolicyHolder(settings.policy.path, on_change=self._policy_changed)
        self.scan_pool = ScanPool(settings.scan)

    # -- the pieces --------------------------------------------------------------------------

    def upstream_factory(self) -> Callable[[], Upstream]:
        if self._upstream_factory is not None:
            return self._upstream_factory
        if self.settings.capture_mode:
            log.warning("relay.dev_capture", note="no upstream configured: mail is kept in the "
                        "capture mailbox, NOT delivered (see `relayguard capture list`)")
            return lambda: CaptureUpstream(self.store)
        upstream = self.settings.upstream
        if not upstream.verify:
            log.warning("relay.upstream_unverified", note="upstream certificates are NOT verified")
        return lambda: SmtpUpstream(upstream)

    async def decide(self, raw: bytes, envelope: Envelope, submitter: Submitter) -> Decision:
        """The pure engine over the policy in force, in a scan worker process."""
        started = time.perf_counter()
        decision, seconds = await self.scan_pool.decide(raw, envelope, submitter, self.policy.current)
        self.metrics.decision_seconds.observe(seconds)
        _decide_started.set(started)
        return decision

    async def commit(self, raw: bytes, envelope: Envelope, submitter: Submitter, decision: Decision,
                     message_id: str | None, subject: str | None) -> str:
        """The message, its decision, its audit entry and any hold notices in ONE transaction.
        Mail to deliver goes straight to this instance's delivery worker when it has room,
        leased to it in the same transaction: no claim, no read of the bytes back."""
        worker = self.worker
        owner = (worker.owner if worker is not None and decision.action is Action.DELIVER
                 and worker.reserve(len(raw)) else None)
        handed: StoredMessage | None = None
        try:
            queue_id, handed = await self.store.batched(
                lambda conn: self._commit_in(conn, raw, envelope, submitter, decision, message_id,
                                             subject, lease_to=owner))
        finally:
            if owner is not None and worker is not None:
                worker.hand_over(handed)
        if worker is not None and handed is None and decision.action is Action.DELIVER:
            worker.wake()  # committed unleased: claim it now rather than at the next poll
        # Counted once committed: a group commit that fails is re-run message by message.
        # Same SMTP session task as decide(), so the context carries its start (end of DATA).
        started = _decide_started.get()
        if started is not None:
            self.metrics.on_decided(decision.action, accept_s=time.perf_counter() - started)
        return queue_id

    async def _commit_in(self, conn: AsyncConnection, raw: bytes, envelope: Envelope,
                         submitter: Submitter, decision: Decision, message_id: str | None,
                         subject: str | None, *, lease_to: str | None,
                         ) -> tuple[str, StoredMessage | None]:
        """``lease_to``: the delivery worker that reserved a place for this message, if any."""
        held = decision.action is Action.HOLD
        handed: StoredMessage | None = None
        if lease_to is not None:
            handed = await self.store.accept_leased(
                owner=lease_to, lease=self.settings.delivery.lease.total_seconds(),
                raw=raw, envelope=envelope, submitter=submitter, decision=decision,
                message_id=message_id, subject=subject, conn=conn)
            queue_id = handed.id
        else:
            queue_id = await self.store.accept(raw=raw, envelope=envelope, submitter=submitter,
                                               decision=decision, message_id=message_id,
                                               subject=subject, conn=conn)
        await audit.append(conn, at=self.store.clock.now(), actor=submitter.name,
                           action="held" if held else "decided", obj=queue_id,
                           details={"action": decision.action.value, "rules": list(decision.rules),
                                    "findings": {f.kind: f.count for f in decision.findings},
                                    "rcpt_count": len(envelope.rcpt_tos),
                                    "policy_version": decision.policy_version})
        if held:
            await notify.on_held(conn, self.store, self.settings, queue_id=queue_id,
                                 envelope=envelope, submitter=submitter, decision=decision,
                                 subject=subject)
        return queue_id, handed

    def _policy_changed(self, old_version: str, fresh: LoadedPolicy) -> None:
        """Audit a reload (the holder calls this synchronously, from a signal or the watcher)."""
        self._tasks.append(asyncio.create_task(self._audit_reload(old_version, fresh)))

    async def _audit_reload(self, old_version: str, fresh: LoadedPolicy) -> None:
        async with self.store.begin() as conn:
            await audit.append(conn, at=self.store.clock.now(), actor="relayguard",
                               action="policy_reloaded", obj=str(self.settings.policy.path),
                               details={"old_version": old_version, "version": fresh.version,
                                        "rules": len(fresh.rules)})

    async def verify_login(self, name: str, password: str, client_ip: str) -> str:
        user = await authenticate(self.store, name, password, via="smtp", client=client_ip)
        return user.name

    def instance_name(self) -> str:
        """Stable across restarts, distinct between instances (no two share a listen address)
        and between the processes of one instance."""
        name = self.settings.delivery.instance or f"{socket.gethostname()}/{self.settings.smtp.listen}"
        return f"{name}#{self.process_index}" if self.process_index else name

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await quarantine.sweep(self.store, self.settings)
            except Exception:
                log.exception("quarantine.sweep_failed")
            await asyncio.sleep(SWEEP_EVERY)

    async def check_alerts(self) -> None:
        for alert in await alerts.check(self.store, self.settings):
            self.metrics.alerts.labels(kind=alert.kind).inc()

    async def purge(self) -> None:
        await retention.purge(self.store, self.settings)

    def _repeat(self, job: Callable[[], Awaitable[None]], every: float, name: str) -> None:
        """Run ``job`` every ``every`` seconds; a failure is logged and retried next round."""
        async def loop() -> None:
            while True:
                # Sleep first: stop() cancels at the sleep, not mid-query, when a relay stops soon
                # after starting (tests), which would otherwise strand a database connection.
                await asyncio.sleep(every)
                try:
                    await job()
                except Exception:  # the relay must outlive a failed background job
                    log.exception(f"{name}.failed")

        self._tasks.append(asyncio.create_task(loop(), name=name))

    async def _start_web(self) -> None:
        from relayguard.web import create_app, health  # noqa: PLC0415 - FastAPI only when the web UI runs

        host, port = parse_listen(self.settings.web.listen, default_port=8025)
        web_app = create_app(self.settings, self.store)
        health.install(web_app, settings=self.settings, store=self.store, metrics=self.metrics)
        config = uvicorn.Config(web_app, host=host, port=port,
                                log_level="warning", access_log=False, lifespan="off")
        self.web = _EmbeddedUvicorn(config)
        self._tasks.append(asyncio.create_task(self.web.serve(), name="web"))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.migrate()
        owner = self.instance_name()
        if released := await self.store.release_leases(owner):
            log.warning("relay.leases_released", owner=owner, count=released,
                        note="mail claimed before an unclean stop is delivered again")
        self.worker = DeliveryWorker(self.store, self.upstream_factory(), self.settings.delivery,
                                     prepare=rewrite.apply, hostname=self.settings.smtp.hostname,
                                     owner=owner)
        self.worker.on_outcome = self.metrics.on_outcome
        handler = RelayHandler(
            limits=FrontLimits(
                max_recipients=self.settings.smtp.max_recipients,
                trusted_networks=tuple(ipaddress.ip_network(n, strict=False)
                                       for n in self.settings.smtp.trusted_networks)),
            decide=self.decide, commit=self.commit)
        self._server = await start_server(handler, settings=self.settings.smtp, verify=self.verify_login,
                                          reuse_port=self.settings.smtp.processes > 1)
        self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery"))
        self._tasks.append(asyncio.create_task(self.scan_pool.warm(), name="scan-warm"))
        if self.process_index == 0:
            self._tasks.append(asyncio.create_task(self._sweep_forever(), name="sweep"))
            self._repeat(self.check_alerts, ALERT_EVERY, "alerts")
            self._repeat(self.purge, PURGE_EVERY, "retention")
        if self.settings.policy.watch:
            self._tasks.append(asyncio.create_task(watch(self.policy), name="policy-watch"))
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            install_sighup(asyncio.get_running_loop(), self.policy)
        if self.settings.web.enabled and self.process_index == 0:
            await self._start_web()
        host, port = parse_listen(self.settings.smtp.listen, default_port=2525)
        log.info("relay.started", smtp=f"{host}:{port}", store=self.store.engine.dialect.name,
                 web=self.settings.web.listen if self.web is not None else None,
                 policy_version=self.policy.version[:12],
                 upstream="capture" if self.settings.capture_mode else
                 f"{self.settings.upstream.host}:{self.settings.upstream.port}")

    @property
    def smtp_port(self) -> int:
        assert self._server is not None
        sockets = list(getattr(self._server, "sockets", []))
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.worker is not None:
            self.worker.stop()
        if self.web is not None:
            self.web.should_exit = True
        for task in self._tasks:
            if task.get_name() != "web":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        self._tasks.clear()
        await self.store.close()
        await self.scan_pool.close()
        log.info("relay.stopped")
