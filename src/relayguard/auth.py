"""Local accounts: argon2 password hashes in the store, roles, and lockout after failures.

Used by SMTP AUTH and the web login alike, so one brute-force counter covers both doors.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relayguard import audit
from relayguard.errors import AuthError
from relayguard.store import Store, User

LOCK_AFTER = 5  # failures in a row
LOCK_FOR = 15 * 60.0  # seconds

_hasher = PasswordHasher()
# Verifying against this keeps the time of "no such user" equal to that of "wrong password".
_DUMMY_HASH = _hasher.hash("relayguard-timing-equaliser")


class Role(StrEnum):
    SENDER = "sender"
    REVIEWER = "reviewer"
    ADMIN = "admin"

    def at_least(self, other: Role) -> bool:
        order = [Role.SENDER, Role.REVIEWER, Role.ADMIN]
        return order.index(self) >= order.index(other)


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    return _hasher.hash(password)


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def authenticate(store: Store, name: str, password: str, *, via: str = "",
                       client: str = "") -> User:
    """The user, if ``password`` is right and the account is not locked; else :class:`AuthError`.

    argon2 is deliberately slow (tens of ms), so it runs in a thread: the event loop keeps
    serving other SMTP sessions meanwhile. Every failure, through whichever door (``via``: smtp,
    web), is an audit entry: a brute-force attempt must be provable afterwards.
    """
    user = await store.get_user(name)
    ok = await asyncio.to_thread(_verify, user.password_hash if user else _DUMMY_HASH, password)
    reason = None
    if user is None:
        reason = "no such user"
    elif user.locked_until is not None and user.locked_until > store.clock.now():
        reason = "account locked"
    else:
        await store.record_login(name, ok=ok, lock_after=LOCK_AFTER, lock_for=LOCK_FOR)
        reason = None if ok else "wrong password"
    if reason is None and user is not None:
        return user
    async with store.begin() as conn:
        await audit.append(conn, at=store.clock.now(), actor=name[:128] or "(empty)",
                           action=audit.AuditAction.LOGIN_FAILED, obj=f"user:{name[:128]}",
                           details={"via": via, "client": client, "reason": reason})
    if reason == "account locked":
        raise AuthError("account locked after repeated failures; try again later")
    raise AuthError("authentication failed")
