"""RFC 2920 PIPELINING on aiosmtplib's connection: MAIL, every RCPT and DATA in one write.

aiosmtplib waits for one reply per command and drops whatever the server sends while no command
waits, so it cannot pipeline: every command of a transaction is a round trip. With an upstream
across a WAN (NHSmail, Microsoft 365) that is a round trip per recipient; on the event loop it is
a write, a wake-up and a read each (profiled: the upstream's socket writes were ~9 % of the relay's
CPU at 1 KiB, four a message). :class:`PipeliningProtocol` is aiosmtplib's protocol with one more
way to wait, :meth:`~PipeliningProtocol.group`: write several commands, collect as many replies
from the same buffer with the same parser. Outside a group it is the parent, unchanged; aiosmtplib
still connects, says EHLO, starts TLS and authenticates. :func:`install` makes aiosmtplib's client
use it (aiosmtplib builds its protocol by that name and takes no class to use instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiosmtplib.smtp
from aiosmtplib.errors import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's SMTPProtocol that can also send a group of commands and read their replies."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # the parent's own arguments
        self._group: list[SMTPResponse] = []
        self._group_size = 0
        self._group_done: asyncio.Future[list[SMTPResponse]] | None = None

    def data_received(self, data: bytes) -> None:
        done = self._group_done
        if done is None:
            super().data_received(data)
            return
        if done.done():
            return
        self._buffer.extend(data)
        try:
            while len(self._group) < self._group_size:
                reply = self._read_response_from_buffer()
                if reply is None:
                    break
                self._group.append(reply)
        except SMTPResponseException as exc:  # a malformed line: what the parent raises too
            self._fail_group(exc)
            return
        if len(self._group) == self._group_size:
            done.set_result(self._group)
        elif len(self._buffer) > MAX_RESPONSE_LENGTH:
            self._fail_group(SMTPResponseException(SMTPStatus.invalid_response, "Response too long"))

    def _fail_group(self, exc: BaseException) -> None:
        if self._group_done is not None and not self._group_done.done():
            self._group_done.set_exception(exc)
            self._group_done.exception()  # retrieved: nobody may be left to await it

    def connection_lost(self, exc: Exception | None) -> None:
        lost = SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail_group(lost)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        self._fail_group(SMTPServerDisconnected("Unexpected EOF received"))
        return super().eof_received()

    async def group(self, commands: Sequence[bytes], *, reply_timeout: float | None) -> list[SMTPResponse]:
        """Write ``commands`` (without their CRLF) at once and return their replies in order.

        Raises what ``execute_command`` raises: SMTPServerDisconnected, SMTPReadTimeoutError
        (the connection is then out of step and must be closed), ValueError for a control
        character in a command (aiosmtplib's own check)."""
        if any(COMMAND_INJECTION_REGEX.search(c) for c in commands):
            raise ValueError("Command arg contains a prohibited control character")
        if self._command_lock is None:
            raise SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            done: asyncio.Future[list[SMTPResponse]] = self._loop.create_future()
            self._group, self._group_size, self._group_done = [], len(commands), done
            try:
                self.write(b"".join(c + b"\r\n" for c in commands))
                async with asyncio.timeout(reply_timeout):
                    return await done
            except TimeoutError as exc:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self._group, self._group_size, self._group_done = [], 0, None


def install() -> None:
    """Make every aiosmtplib client in this process build a PipeliningProtocol; idempotent."""
    # aiosmtplib.smtp names the class it builds; it is not exported, so mypy would refuse it
    setattr(aiosmtplib.smtp, "SMTPProtocol", PipeliningProtocol)  # noqa: B010
