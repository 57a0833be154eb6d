"""Every corpus case reaches its expected decision, through the engine and through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from relayguard.cli import app
from relayguard.cli.policy import header_envelope
from relayguard.config import ScanSettings
from relayguard.decision import Decision, Envelope, Submitter, SubmitterKind
from relayguard.policy import LoadedPolicy, decide

from .conftest import ROOT

CORPUS = ROOT / "tests" / "corpus"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())


def envelope_for(name: str) -> Envelope:
    """From and To + Cc from the headers, plus the case's envelope-only (BCC) recipients."""
    raw = (CORPUS / f"{name}.eml").read_bytes()
    env = header_envelope(raw)
    return Envelope(env.mail_from, (*env.rcpt_tos, *EXPECTED[name].get("envelope_extra", ())))


def check(name: str, got: dict[str, Any]) -> None:
    want = EXPECTED[name]
    assert got["action"] == want["action"]
    if "rewrite" in want:
        assert got["rewrite"] == want["rewrite"]
    assert set(want.get("findings", ())) <= {f["kind"] for f in got["findings"]}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_case_through_engine(name: str, default_policy: LoadedPolicy) -> None:
    """The engine with the real detectors gives the corpus case its expected decision."""
    env = envelope_for(name)
    decision = decide((CORPUS / f"{name}.eml").read_bytes(), env,
                      Submitter(env.mail_from, SubmitterKind.NETWORK, "127.0.0.1"), default_policy,
                      limits=ScanSettings())
    check(name, decision.to_json())
    assert decision.policy_version == default_policy.version


def _explain(*args: str) -> dict[str, Any]:
    cmd = [str(ROOT / ".venv/bin/relayguard"), "policy", "explain", "--policy",
           str(ROOT / "policies/default.yaml"), "--json", *args]
    run = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    data: dict[str, Any] = json.loads(run.stdout)
    return data


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_case_through_explain_subprocess(name: str) -> None:
    """``relayguard policy explain --json`` run as a program gives the expected decision."""
    args: list[str] = []
    if EXPECTED[name].get("envelope_extra"):
        env = envelope_for(name)
        args += ["--from", env.mail_from]
        for rcpt in env.rcpt_tos:
            args += ["--to", rcpt]
    got = _explain(*args, str(CORPUS / f"{name}.eml"))
    check(name, got)
    assert Decision.from_json(got).action.value == got["action"]
    for f in got["findings"]:
        assert {"kind", "count", "where"} <= set(f)


def test_corpus_folder_passes_policy_test(default_policy: LoadedPolicy) -> None:
    """The corpus folder doubles as an admin regression folder: ``policy test`` passes it."""
    result = CliRunner().invoke(app, ["policy", "test", str(CORPUS), "--policy",
                                      str(ROOT / "policies/default.yaml"), "--json"])
    assert result.exit_code == 0, result.stdout
    assert [c["ok"] for c in json.loads(result.stdout)] == [True] * len(EXPECTED)


def test_corpus_copy_matches_shared_corpus() -> None:
    """tests/corpus is an exact copy of the shared corpus, so both checks test the same mail."""
    shared = Path("/work/shared/corpus")
    if not shared.is_dir():
        pytest.skip("shared corpus not present on this machine")
    for path in shared.iterdir():
        assert (CORPUS / path.name).read_bytes() == path.read_bytes(), path.name
