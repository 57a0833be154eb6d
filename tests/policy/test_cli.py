"""``relayguard policy explain`` and ``policy test`` as an admin uses them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from relayguard.cli import app
from relayguard.cli.policy import header_envelope

from .conftest import ROOT, SENDER, eml

POLICY = str(ROOT / "policies" / "default.yaml")


def test_header_envelope_takes_from_and_to_cc_bcc() -> None:
    """Without --from/--to the envelope is From, and To + Cc + Bcc, each address once."""
    raw = eml("To: A <a@x.org>, b@y.org", "Cc: b@y.org", "Bcc: c@z.org")
    env = header_envelope(raw)
    assert (env.mail_from, env.rcpt_tos) == (SENDER, ("a@x.org", "b@y.org", "c@z.org"))


def test_explain_json_with_explicit_envelope(tmp_path: Path) -> None:
    """--to adds BCC recipients the headers lack; the JSON names action, rewrite, rules, findings."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(eml("To: a@gmail.com", "Cc: b@yahoo.co.uk"))
    result = CliRunner().invoke(app, ["policy", "explain", "--policy", POLICY, "--from", SENDER,
                                      "--to", "a@gmail.com", "--to", "b@yahoo.co.uk", str(msg), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["action"], got["rewrite"], got["rules"], got["findings"]) == (
        "deliver", "bcc", ["public-mailboxes-visible"], [])


def test_explain_human_output_is_a_panel(tmp_path: Path) -> None:
    """The human form shows the action and matched rules in a panel."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(eml("To: a@gmail.com", "Cc: <<broken"))
    result = CliRunner().invoke(app, ["policy", "explain", "--policy", POLICY, str(msg)])
    assert result.exit_code == 0, result.output
    assert "HOLD" in result.stdout
    assert "unreadable-address-headers" in result.stdout
    assert "address_defect" in result.stdout


def test_explain_with_broken_policy_fails_with_position(tmp_path: Path) -> None:
    """explain refuses an invalid policy and names where it is wrong."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(eml("To: a@x.org"))
    bad = Path(__file__).parent / "broken" / "typo_key.yaml"
    result = CliRunner().invoke(app, ["policy", "explain", "--policy", str(bad), str(msg)])
    assert result.exit_code == 1
    assert f"invalid policy: {bad}:7:9: rules[0].when.visible_recipients.mim: unknown key" in result.output


def test_policy_test_reports_failures_and_exits_1(tmp_path: Path) -> None:
    """A case whose expectation is not met fails the run and is shown as FAIL."""
    (tmp_path / "ok.eml").write_bytes(eml("To: a@nhs.net"))
    (tmp_path / "wrong.eml").write_bytes(eml("To: a@gmail.com, b@gmail.com"))
    (tmp_path / "expected.yaml").write_text(
        "ok: {action: deliver, rewrite: null}\n"
        "wrong: {action: deliver, rewrite: null}\n"
        "missing: {action: hold}\n")
    result = CliRunner().invoke(app, ["policy", "test", str(tmp_path), "--policy", POLICY, "--json"])
    assert result.exit_code == 1
    got = {c["case"]: c["problems"] for c in json.loads(result.stdout)}
    assert got == {"ok": [], "wrong": ["rewrite bcc, expected None"], "missing": ["missing.eml not found"]}
    table = CliRunner().invoke(app, ["policy", "test", str(tmp_path), "--policy", POLICY])
    assert "FAIL" in table.stdout
    assert "1/3 cases pass" in table.stdout
