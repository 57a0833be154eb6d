"""Local accounts: argon2 password hashes in the store, roles, and lockout after failures.

Used by SMTP AUTH and the web login alike, so one brute-force counter covers both doors.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

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


async def authenticate(store: Store, name: str, password: str) -> User:
    """The user, if ``password`` is right and the account is not locked; else :class:`AuthError`.

    argon2 is deliberately slow (tens of ms), so it runs in a thread: the event loop keeps
    serving other SMTP sessions meanwhile.
    """
    user = await store.get_user(name)
    ok = await asyncio.to_thread(_verify, user.password_hash if user else _DUMMY_HASH, password)
    if user is None:
        raise AuthError("authentication failed")
    if user.locked_until is not None and user.locked_until > store.clock.now():
        raise AuthError("account locked after repeated failures; try again later")
    await store.record_login(name, ok=ok, lock_after=LOCK_AFTER, lock_for=LOCK_FOR)
    if not ok:
        raise AuthError("authentication failed")
    return user
