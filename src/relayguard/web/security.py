"""Sessions, CSRF tokens and login throttling for the web UI.

Sessions are server-side (a random id in the cookie, the rest in memory): logout and rotation
really end a session, and nothing about the user travels in the cookie. A restart logs everyone
out, which for a practice's review page is an acceptable price. Every session, anonymous ones
included, carries a CSRF token that each form echoes back (synchroniser-token pattern).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

COOKIE = "rg_session"
ANON_TTL = 3600.0
MAX_SESSIONS = 10_000  # bounds memory when someone mints anonymous sessions in a loop


@dataclass(slots=True)
class Session:
    sid: str
    csrf: str
    expires: float
    user: str | None = None
    role: str | None = None


@dataclass(slots=True)
class Sessions:
    ttl: float
    _by_id: dict[str, Session] = field(default_factory=dict)

    def new(self, *, user: str | None = None, role: str | None = None) -> Session:
        self._prune()
        ttl = self.ttl if user else ANON_TTL
        session = Session(sid=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
                          expires=time.monotonic() + ttl, user=user, role=role)
        self._by_id[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid or "")
        if session is None:
            return None
        if session.expires < time.monotonic():
            self._by_id.pop(session.sid, None)
            return None
        return session

    def rotate(self, old: Session | None, *, user: str, role: str) -> Session:
        """A fresh id and CSRF token at login: an id planted before login is worth nothing after."""
        self.end(old)
        return self.new(user=user, role=role)

    def end(self, session: Session | None) -> None:
        if session is not None:
            self._by_id.pop(session.sid, None)

    def end_user(self, name: str) -> None:
        for sid in [s.sid for s in self._by_id.values() if s.user == name]:
            del self._by_id[sid]

    def _prune(self) -> None:
        now = time.monotonic()
        for sid in [s.sid for s in self._by_id.values() if s.expires < now]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:  # oldest first: dicts keep insertion order
            del self._by_id[next(iter(self._by_id))]


def csrf_ok(session: Session | None, token: object) -> bool:
    return (session is not None and isinstance(token, str)
            and hmac.compare_digest(session.csrf.encode(), token.encode()))


@dataclass(slots=True)
class Throttle:
    """At most ``limit`` failed logins per key in ``window`` seconds (sliding window)."""

    limit: int = 10
    window: float = 15 * 60.0
    _fails: dict[str, deque[float]] = field(default_factory=dict)

    def blocked(self, key: str) -> bool:
        fails = self._fails.get(key)
        if not fails:
            return False
        cutoff = time.monotonic() - self.window
        while fails and fails[0] < cutoff:
            fails.popleft()
        return len(fails) >= self.limit

    def fail(self, key: str) -> None:
        if len(self._fails) > MAX_SESSIONS:
            self._fails.clear()  # memory bound; the per-account lockout still holds
        self._fails.setdefault(key, deque()).append(time.monotonic())
