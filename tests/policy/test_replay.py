"""``relayguard policy replay``: re-decide stored mail under a candidate policy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relayguard.cli import app
from relayguard.cli.policy import parse_since
from relayguard.config import ScanSettings
from relayguard.decision import Envelope, Submitter, SubmitterKind
from relayguard.policy import LoadedPolicy, decide
from relayguard.store import open_store

from .conftest import SENDER, FixedDetector, eml

CANDIDATE = """
rules:
  - name: no-freemail
    when: {recipients: {in: [public_mailbox]}}
    then: {action: hold}
"""


async def _seed(url: str, policy: LoadedPolicy) -> None:
    store = open_store(url)
    await store.migrate()
    try:
        for rcpt in ("a@gmail.com", "ward@nhs.net"):
            raw = eml(f"To: {rcpt}")
            env = Envelope(SENDER, (rcpt,))
            who = Submitter(SENDER, SubmitterKind.NETWORK, "127.0.0.1")
            decision = decide(raw, env, who, policy, limits=ScanSettings(), detector=FixedDetector())
            await store.accept(raw=raw, envelope=env, submitter=who, decision=decision)
    finally:
        await store.close()


def test_replay_lists_only_the_messages_whose_decision_changes(
        tmp_path: Path, default_policy: LoadedPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a stricter candidate, the freemail message changes to hold and the nhs.net one does not."""
    url = f"sqlite:///{tmp_path}/relayguard.db"
    asyncio.run(_seed(url, default_policy))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE)
    monkeypatch.setenv("RELAYGUARD_STORE__URL", url)
    args = ["policy", "replay", "--policy", str(candidate), "--since", "1d", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["messages"] == 2
    assert [(c["before"]["action"], c["after"]["action"], c["rules_added"]) for c in got["changed"]] == [
        ("deliver", "hold", ["no-freemail"])]
    table = CliRunner().invoke(app, ["policy", "replay", "--policy", str(candidate)])
    assert "1 of 2 message(s) since 7d would be decided differently" in table.stdout


def test_since_accepts_units_and_refuses_nonsense() -> None:
    """--since takes minutes, hours, days and weeks, and nothing else."""
    assert [parse_since(v) for v in ("30m", "12h", "7d", "2w")] == [1800, 43200, 604800, 1209600]
    result = CliRunner().invoke(app, ["policy", "replay", "--policy", "x.yaml", "--since", "soon"])
    assert result.exit_code == 2
    assert "30m, 12h, 7d, 2w" in result.output
