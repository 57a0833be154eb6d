"""Rows of the store as typed values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row

from relayguard.decision import Decision, Envelope, Submitter, SubmitterKind
from relayguard.store.states import State


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    created_at: float
    updated_at: float
    origin: str
    envelope: Envelope
    submitter: Submitter
    message_id: str | None
    subject: str | None
    size: int
    state: State
    decision: Decision
    attempts: int
    next_attempt_at: float | None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    delivered_at: float | None = None
    purged_at: float | None = None
    raw: bytes | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> StoredMessage:
        m = row._mapping
        return cls(
            id=m["id"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            origin=m["origin"],
            envelope=Envelope(mail_from=m["mail_from"], rcpt_tos=tuple(json.loads(m["rcpts"]))),
            submitter=Submitter(name=m["submitter"], kind=SubmitterKind(m["submitter_kind"]),
                                client_addr=m["client_addr"]),
            message_id=m["message_id"],
            subject=m["subject"],
            size=m["size"],
            state=State(m["state"]),
            decision=Decision.from_json(json.loads(m["decision"])),
            attempts=m["attempts"],
            next_attempt_at=m["next_attempt_at"],
            results=json.loads(m["results"] or "{}"),
            last_error=m["last_error"],
            delivered_at=m["delivered_at"],
            purged_at=m["purged_at"],
            raw=m.get("raw"),
        )

    def summary(self) -> dict[str, Any]:
        """The message as listed by CLI and web: metadata only, never the content."""
        return {
            "id": self.id,
            "created_at": self.created_at,
            "state": self.state.value,
            "origin": self.origin,
            "mail_from": self.envelope.mail_from,
            "rcpt_count": len(self.envelope.rcpt_tos),
            "submitter": self.submitter.name,
            "message_id": self.message_id,
            "subject": self.subject,
            "size": self.size,
            "action": self.decision.action.value,
            "rules": list(self.decision.rules),
            "findings": [f.public() for f in self.decision.findings],
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str
    role: str
    email: str | None
    created_at: float
    failed_logins: int
    locked_until: float | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> User:
        m = row._mapping
        return cls(name=m["name"], password_hash=m["password_hash"], role=m["role"], email=m["email"],
                   created_at=m["created_at"], failed_logins=m["failed_logins"],
                   locked_until=m["locked_until"])
