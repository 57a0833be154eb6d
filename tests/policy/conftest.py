"""Shared helpers for policy tests: message builders, a fixed-findings detector, the default policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from relayguard.config import ScanSettings
from relayguard.decision import Decision, Envelope, Finding, Submitter, SubmitterKind
from relayguard.policy import LoadedPolicy, decide, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
SENDER = "reception@oakfield-surgery.nhs.uk"


def eml(*headers: str, body: str = "Hello.\r\n") -> bytes:
    """A message from header lines (``"To: a@b"``) and a body, CRLF line ends."""
    head = [f"From: Reception <{SENDER}>", *headers]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


class FixedDetector:
    """A detector stand-in returning the same findings for every message (picklable)."""

    def __init__(self, findings: Sequence[Finding] = ()) -> None:
        self.findings = list(findings)

    def __call__(self, msg: Any, *, limits: ScanSettings, custom: Any = None,
                 salt: bytes = b"", inline_slice: float | None = None) -> list[Finding]:
        return list(self.findings)


def nhs(count: int = 1, *, where: str = "body", confident: bool = True, start: int = 0) -> Finding:
    digests = frozenset(f"d{i}" for i in range(start, start + count))
    return Finding(kind="nhs_number", where=where, count=count, confident=confident, digests=digests)


def run(policy: LoadedPolicy, raw: bytes, rcpts: Sequence[str] = (), *, findings: Sequence[Finding] = (),
        mail_from: str = SENDER, submitter: Submitter | None = None) -> Decision:
    env = Envelope(mail_from, tuple(rcpts))
    sub = submitter or Submitter(mail_from, SubmitterKind.NETWORK, "127.0.0.1")
    return decide(raw, env, sub, policy, limits=ScanSettings(), detector=FixedDetector(findings))


def policy_from(text: str) -> LoadedPolicy:
    return parse_policy(text.encode(), "test.yaml")


@pytest.fixture(scope="session")
def default_policy() -> LoadedPolicy:
    return load_policy(ROOT / "policies" / "default.yaml")
