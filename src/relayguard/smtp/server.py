"""The SMTP listener: aiosmtpd's protocol with our AUTH, session limits and TLS settings."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, syntax

from relayguard.config import SmtpSettings, parse_listen
from relayguard.errors import AuthError
from relayguard.log import get_logger, safe
from relayguard.smtp.data import DataScanner, DataState
from relayguard.smtp.handler import RelayHandler
from relayguard.smtp.speedups import install as _install_speedups
from relayguard.smtp.speedups import simple_path

log = get_logger("relayguard.smtp")
_install_speedups()

# verify(name, password, client_ip) -> account name; raises AuthError.
Verifier = Callable[[str, str, str], Awaitable[str]]

# AUTH back-off per client address: the n-th failure in a row waits BASE * 2**(n-1) seconds,
# at most MAX, before its 535. auth.py locks the account after 5 failures; this slows a guesser
# who sprays many accounts from one address. Forgotten FORGET seconds after the last failure.
AUTH_BACKOFF_BASE = 0.5
AUTH_BACKOFF_MAX = 8.0
AUTH_BACKOFF_FORGET = 15 * 60.0
_MAX_TRACKED = 10_000  # bounds memory when failures come from many addresses

# DATA is read this much at a time (the most an asyncio socket transport hands over at once).
DATA_CHUNK = 256 * 1024


def _extract_only(server: SMTP, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    """aiosmtpd's built-in PLAIN/LOGIN parsers call this synchronously: we only take the
    credentials here and check them asynchronously in :meth:`RelaySMTP._verified`."""
    return AuthResult(success=True, auth_data=auth_data)


def _source_routed(arg: str | None) -> bool:
    """``FROM:<@a,@b:x@y>`` / ``TO: <@a:x@y>`` (RFC 5321 obsolete source route)."""
    path = (arg or "").partition(":")[2].lstrip()
    return path.startswith(("<@", "@"))


class SessionLimiter:
    """Counts open sessions, in all and per client address."""

    def __init__(self, *, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open: Counter[str] = Counter()
        self.auth_failures: dict[str, tuple[int, float]] = {}  # ip -> (failures in a row, last)

    def admit(self, ip: str) -> bool:
        if sum(self.open.values()) >= self.total or self.open[ip] >= self.per_ip:
            return False
        self.open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]

    def auth_failed(self, ip: str) -> float:
        """Record a failed AUTH from ``ip``; the seconds to wait before answering it."""
        now = time.monotonic()
        count, last = self.auth_failures.get(ip, (0, now))
        if now - last > AUTH_BACKOFF_FORGET:
            count = 0
        if len(self.auth_failures) >= _MAX_TRACKED:
            self.auth_failures.clear()
        self.auth_failures[ip] = (count + 1, now)
        return float(min(AUTH_BACKOFF_BASE * 2 ** count, AUTH_BACKOFF_MAX))

    def auth_succeeded(self, ip: str) -> None:
        self.auth_failures.pop(ip, None)


class RelaySMTP(SMTP):
    def __init__(self, handler: RelayHandler, *, settings: SmtpSettings, verify: Verifier,
                 limiter: SessionLimiter, tls_context: ssl.SSLContext | None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Read by SMTP.__init__ to size the stream reader: longer DATA lines get 500.
        self.line_length_limit = settings.max_line_length + 2
        super().__init__(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="relayguard ESMTP",
            tls_context=tls_context,
            require_starttls=False,  # trusted clinical systems may relay in clear on the LAN
            auth_required=False,  # enforced per command in the handler (trusted networks skip it)
            auth_require_tls=True,  # AUTH is neither offered nor accepted before STARTTLS
            authenticator=_extract_only,
            timeout=settings.timeout,
            command_call_limit={"AUTH": 5, "*": 10000},
            # Without it aiosmtpd looks the loop up, under warnings.catch_warnings(), for every
            # connection.
            loop=loop,
        )
        self._verify = verify
        self._limiter = limiter
        self._admitted_ip: str | None = None
        self._continued: list[str] = []  # lines of a multiline reply not yet written (push)
        self._idle_deadline = 0.0  # loop time at which the session has been idle too long

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if not first:
            return  # the STARTTLS upgrade of a session already counted
        if self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._unlink)
        ip = str((transport.get_extra_info("peername") or ("",))[0])
        if self._limiter.admit(ip):
            self._admitted_ip = ip
            return
        log.warning("smtp.session_refused", client=ip, reason="too many sessions")
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()  # before it greets: the client gets only the 421
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
        transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timeout, without a new timer for every command. aiosmtpd cancelled
        its timer and started another each time (a heap push, and a cancelled entry the loop
        sweeps out later): ~3 % of the relay's CPU under load. Here the deadline moves on, and
        the one timer, finding it moved when it fires, waits again for what is left. Only a
        deadline earlier than the timer's (a shorter ``duration``) needs a new timer."""
        now = self.loop.time()
        self._idle_deadline = now + (duration or self._timeout_duration)
        timer = self._timeout_handle
        # A timer not yet due (one that is due may have run already) and not later than the
        # new deadline will see it.
        if timer is not None and not timer.cancelled() and now < timer.when() <= self._idle_deadline:
            return
        if timer is not None:
            timer.cancel()
        self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)

    def _idle_timer(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)
            return
        self._timeout_cb()  # type: ignore[no-untyped-call]

    def _unlink(self, task: asyncio.Task[None]) -> None:
        """Cut the reference cycles a finished session leaves, so that reference counting frees
        the connection's objects (~60: the protocol, its transport and streams, the session, the
        bound methods aiosmtpd makes for every connection) as soon as it is gone. Otherwise only
        the cyclic garbage collector can. Measured under load (1 KiB, 20 sessions): the collector
        took ~3 % of the relay's CPU, ~80 µs a message, half of it in collections of the older
        generations these objects survived into; with this, about half that.

        aiosmtpd ends every session by cancelling its own task (after QUIT too). The task keeps
        that CancelledError, whose traceback's frames keep this protocol, which keeps the task:
        ``result()`` hands the error over (asyncio moves it out of the task) and it is dropped
        here. The method tables hold methods bound to this protocol; nothing is dispatched
        through them once the task is done, nor written to the client. An error other than a
        cancel is left to asyncio, which logs it if nobody looks."""
        if task.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        self._smtp_methods = {}
        self._auth_methods = {}
        # asyncio's stream protocol keeps its start-up callback (a method bound to this protocol)
        # and aiosmtpd the stream writer (which points back at it): both used only at the start.
        self._client_connected_cb = None
        self._writer = None  # type: ignore[assignment]  # typed for the session's lifetime

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted_ip is not None:
            self._limiter.release(self._admitted_ip)
            self._admitted_ip = None
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's push(), except that the lines of a multiline reply (``250-...``: EHLO's
        five or six) are held and written with its last line: one socket write and one drain
        instead of one each (each write to a socket is a system call, and on loopback the
        kernel's whole delivery to the client). The client acts on none of them before the
        last line anyway (RFC 5321 4.2.1)."""
        if isinstance(status, str) and status[3:4] == "-":
            self._continued.append(status)
            return
        if self._continued:
            held, self._continued = "\r\n".join(self._continued), []
            if isinstance(status, str):
                await super().push(f"{held}\r\n{status}")
                return
            await super().push(held)
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing, with the common ``<local@domain> PARAMS`` form read by a
        regex (see speedups.py); anything else, or a local part over the limit, goes to it."""
        found = simple_path(arg)
        if found is None or (self.local_part_limit
                             and len(found[0].rpartition("@")[0]) > self.local_part_limit):
            try:
                return super()._getaddr(arg)
            except Exception:  # noqa: BLE001
                # The email parser crashes on some malformed paths ("<", "0@[", "0@[ ": IndexError,
                # AttributeError, UnboundLocalError...): aiosmtpd would answer 500 with the
                # exception's name; a syntax error is the truthful reply.
                return None, None
        return found

    # aiosmtpd drops a source route (``<@a:b@c>`` becomes ``b@c``) before the handler's hook sees
    # the address, so address_problem() never could refuse it: look at the raw argument here.
    async def smtp_MAIL(self, arg: str) -> None:  # noqa: N802
        if _source_routed(arg):
            await self.push("553 5.1.7 Sender address refused: source routes are not accepted")
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:  # noqa: N802
        if _source_routed(arg):
            await self.push("553 5.1.3 Recipient address refused: source routes are not accepted")
            return
        await super().smtp_RCPT(arg)

    # aiosmtpd's smtp_DATA, with its per-line reading and un-stuffing replaced by DataScanner:
    # the same replies, end of data, limits and state, for a few bytes operations per chunk.
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        scanner = await self._read_data()
        if scanner.state is not DataState.NOMINAL:
            await self.push(scanner.state.value)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        assert not self._decode_data  # content is the bytes, as aiosmtpd gives with decode_data=False
        self.envelope.content = self.envelope.original_content = scanner.content()
        # RelayHandler has handle_DATA, so aiosmtpd's process_message() fallback never applies.
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> DataScanner:
        reader = self._reader
        reader_limit: int = reader._limit  # type: ignore[attr-defined]
        scanner = DataScanner(size_limit=self.data_size_limit, line_limit=self.line_length_limit,
                              overrun_limit=reader_limit)
        # The reader's limit is the command line limit (about 1 KB), and the transport pauses once
        # 2 x limit bytes wait unread: with it, every 256 KiB the socket delivers would pause and
        # resume reading (two epoll_ctl calls) and nothing could arrive while we scan. Raised for
        # DATA, at most 2 x DATA_CHUNK (+ one recv) waits per client; put back for the commands.
        reader._limit = max(reader_limit, DATA_CHUNK)  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    chunk = await reader.read(DATA_CHUNK)
                except asyncio.CancelledError:
                    log.info("smtp.data_connection_lost", client=self._admitted_ip)
                    self._writer.close()
                    raise
                if not chunk:  # EOF; eof_received() cancels us first, so this is a backstop
                    raise ConnectionResetError("connection closed during DATA")
                self._reset_timeout()  # a slow but live upload is not idle
                end = scanner.feed(chunk)
                if end >= 0:
                    if end < len(chunk):
                        # Pipelined commands behind the end of data: back to the front of the
                        # reader's buffer, where aiosmtpd's command loop reads them next.
                        reader._buffer[:0] = chunk[end:]  # type: ignore[attr-defined]
                    return scanner
        finally:
            reader._limit = reader_limit  # type: ignore[attr-defined]

    async def _verified(self, result: AuthResult) -> AuthResult:
        if not result.success or not isinstance(result.auth_data, LoginPassword):
            return result
        creds: LoginPassword = result.auth_data
        name = creds.login.decode("utf-8", "replace")
        ip = str(self.session.peer[0]) if self.session and self.session.peer else ""
        try:
            account = await self._verify(name, creds.password.decode("utf-8", "replace"), ip)
        except AuthError as exc:
            delay = self._limiter.auth_failed(ip)
            log.warning("smtp.auth_failed", user=safe(name), client=ip, reason=str(exc),
                        backoff_s=delay)
            await asyncio.sleep(delay)
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Authentication credentials invalid")
        self._limiter.auth_succeeded(ip)
        return AuthResult(success=True, auth_data=account)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._verified(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._verified(await super().auth_LOGIN(_, args))


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert or not settings.tls_key:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(Path(settings.tls_cert), Path(settings.tls_key))
    return ctx


async def start_server(handler: RelayHandler, *, settings: SmtpSettings, verify: Verifier,
                       reuse_port: bool = False) -> asyncio.Server:
    """Listen on ``settings.listen``. ``reuse_port``: share the port with our sibling processes
    (never set for one process, so a second instance started by mistake fails to bind)."""
    host, port = parse_listen(settings.listen, default_port=2525)
    limiter = SessionLimiter(total=settings.max_sessions, per_ip=settings.max_sessions_per_ip)
    ctx = tls_context(settings)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: RelaySMTP(handler, settings=settings, verify=verify, limiter=limiter, tls_context=ctx,
                          loop=loop),
        host=host, port=port, reuse_address=True, reuse_port=reuse_port or None)
