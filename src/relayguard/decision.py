"""The values that flow between receive, decide, store and deliver.

These are plain frozen dataclasses with no I/O so that the pure core (``policy``, ``detect``,
``extract``, ``rewrite``) and the edges (``smtp``, ``store``, ``delivery``) share one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What happens to a message. Ordered by strictness: the strictest matched rule wins."""

    DELIVER = "deliver"
    HOLD = "hold"
    REJECT = "reject"

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]


_STRICTNESS = {Action.DELIVER: 0, Action.HOLD: 1, Action.REJECT: 2}


class Rewrite(StrEnum):
    """How visible recipients are hidden from each other before delivery."""

    BCC = "bcc"
    INDIVIDUAL = "individual"


class SubmitterKind(StrEnum):
    USER = "user"  # authenticated SMTP user: ``Submitter.name`` is the account name
    NETWORK = "network"  # trusted-network client: ``Submitter.name`` is the envelope sender


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who handed the message to us; the four-eyes rule compares reviewers against this."""

    name: str
    kind: SubmitterKind
    client_addr: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope exactly as the client gave it (MAIL FROM may be empty for bounces)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector found in one place of a message.

    Raw identifiers never leave the detector: ``sample`` is masked (``943 *** **21``) and
    ``digests`` holds keyed hashes of the normalised values, so the engine can count distinct
    identifiers across parts without holding the identifiers themselves.
    """

    kind: str  # nhs_number, chi_number, hc_number, date_of_birth, postcode, unscannable, term:X, pattern:X
    where: str  # "body", "attachment:papers.xlsx/Data!C14", "attachment:a.zip/b.csv"
    count: int = 1  # distinct values at this place
    confident: bool = True
    sample: str | None = None
    reason: str | None = None  # why something was unscannable
    digests: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def public(self) -> dict[str, Any]:
        """The finding as it may be logged, stored and shown (never the digests)."""
        out: dict[str, Any] = {"kind": self.kind, "count": self.count, "where": self.where,
                               "confident": self.confident}
        if self.sample is not None:
            out["sample"] = self.sample
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy engine decided for one message; the handler maps it to an SMTP reply."""

    action: Action = Action.DELIVER
    rewrite: Rewrite | None = None
    rules: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    reply: str | None = None  # text for a reject, from the rule
    tag_subject: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    approvals_required: int = 1
    approver_role: str = "reviewer"
    policy_version: str = ""

    def to_json(self) -> dict[str, Any]:
        """The decision as stored, logged and printed by ``policy explain --json``."""
        return {
            "action": self.action.value,
            "rewrite": self.rewrite.value if self.rewrite else None,
            "rules": list(self.rules),
            "findings": [f.public() for f in self.findings],
            "reply": self.reply,
            "tag_subject": list(self.tag_subject),
            "notify": list(self.notify),
            "approvals_required": self.approvals_required,
            "approver_role": self.approver_role,
            "policy_version": self.policy_version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(
            action=Action(data["action"]),
            rewrite=Rewrite(data["rewrite"]) if data.get("rewrite") else None,
            rules=tuple(data.get("rules", ())),
            findings=tuple(
                Finding(kind=f["kind"], where=f["where"], count=f.get("count", 1),
                        confident=f.get("confident", True), sample=f.get("sample"),
                        reason=f.get("reason"))
                for f in data.get("findings", ())
            ),
            reply=data.get("reply"),
            tag_subject=tuple(data.get("tag_subject", ())),
            notify=tuple(data.get("notify", ())),
            approvals_required=int(data.get("approvals_required", 1)),
            approver_role=data.get("approver_role", "reviewer"),
            policy_version=data.get("policy_version", ""),
        )


DELIVER_UNCHANGED = Decision()
