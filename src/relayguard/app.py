"""The composition root: one ``Relay`` wires settings, store, engine, SMTP front, delivery and web.

``relayguard serve`` runs one; the tests run one in-process against a recording upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from relayguard import audit
from relayguard.auth import authenticate
from relayguard.clock import Clock
from relayguard.config import Settings, parse_listen
from relayguard.decision import Action, Decision, Envelope, Submitter
from relayguard.delivery import DeliveryWorker
from relayguard.log import get_logger
from relayguard.policy import engine
from relayguard.policy.loader import LoadedPolicy, load_policy
from relayguard.smtp import FrontLimits, RelayHandler, start_server
from relayguard.store import Store, open_store
from relayguard.upstream import CaptureUpstream, SmtpUpstream, Upstream

log = get_logger("relayguard")


class Relay:
    """One relay instance. ``await start()``, then ``await stop()``."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 upstream_factory: Callable[[], Upstream] | None = None) -> None:
        self.settings = settings
        self.store: Store = open_store(settings.store.url, clock=clock,
                                       synchronous=settings.store.synchronous)
        self._upstream_factory = upstream_factory
        self.worker: DeliveryWorker | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Loaded here, not in start(): a broken policy stops `serve` before it listens.
        self.policy: LoadedPolicy = load_policy(settings.policy.path)

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

    def decide(self, raw: bytes, envelope: Envelope, submitter: Submitter) -> Decision:
        """The pure engine over the policy in force (runs in an executor thread)."""
        return engine.decide(raw, envelope, submitter, self.policy, limits=self.settings.scan)

    async def commit(self, raw: bytes, envelope: Envelope, submitter: Submitter, decision: Decision,
                     message_id: str | None, subject: str | None) -> str:
        """The message, its decision and its audit entry in ONE transaction (then the 250)."""
        async with self.store.begin() as conn:
            queue_id = await self.store.accept(raw=raw, envelope=envelope, submitter=submitter,
                                               decision=decision, message_id=message_id,
                                               subject=subject, conn=conn)
            await audit.append(conn, at=self.store.clock.now(), actor=submitter.name,
                               action="held" if decision.action is Action.HOLD else "decided",
                               obj=queue_id, details={"action": decision.action.value,
                                                      "rules": list(decision.rules),
                                                      "rcpt_count": len(envelope.rcpt_tos),
                                                      "policy_version": decision.policy_version})
        return queue_id

    async def verify_login(self, name: str, password: str, client_ip: str) -> str:
        user = await authenticate(self.store, name, password)
        return user.name

    def instance_name(self) -> str:
        """Stable across restarts, distinct between instances (no two share a listen address)."""
        return self.settings.delivery.instance or f"{socket.gethostname()}/{self.settings.smtp.listen}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.migrate()
        owner = self.instance_name()
        if released := await self.store.release_leases(owner):
            log.warning("relay.leases_released", owner=owner, count=released,
                        note="mail claimed before an unclean stop is delivered again")
        self.worker = DeliveryWorker(self.store, self.upstream_factory(), self.settings.delivery,
                                     hostname=self.settings.smtp.hostname, owner=owner)
        handler = RelayHandler(
            limits=FrontLimits(
                max_recipients=self.settings.smtp.max_recipients,
                trusted_networks=tuple(ipaddress.ip_network(n, strict=False)
                                       for n in self.settings.smtp.trusted_networks)),
            decide=self.decide, commit=self.commit, on_accepted=self.worker.wake)
        self._server = await start_server(handler, settings=self.settings.smtp, verify=self.verify_login)
        self._tasks.append(asyncio.create_task(self.worker.run(), name="delivery"))
        host, port = parse_listen(self.settings.smtp.listen, default_port=2525)
        log.info("relay.started", smtp=f"{host}:{port}", store=self.store.engine.dialect.name,
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.store.close()
        log.info("relay.stopped")
