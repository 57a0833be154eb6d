"""Loading policy files: every mistake is named with file, line, column and reason."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relayguard.cli import app
from relayguard.policy import PolicyFileError, load_policy, parse_policy

from .conftest import ROOT

BROKEN = Path(__file__).parent / "broken"

EXPECTED = {
    "typo_key.yaml": "7:9: rules[0].when.visible_recipients.mim: unknown key 'mim' (did you mean 'min'?)",
    "wrong_type.yaml": "7:23: rules[0].when.findings.min_distinct: expected a whole number, got 'ten'",
    "unknown_list.yaml": "8:29: rules[0].when.recipients.outside[1]: unknown domain list 'securre' "
                         "(known: internal, public_mailbox, secure)",
    "bad_regex.yaml": "7:18: rules[0].when.headers[0].regex: invalid regex: missing ) at position 16",
    "yaml_syntax.yaml": "7:12: YAML syntax: while parsing a flow sequence: expected ',' or ']', but got ':'",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_policy_is_reported_with_position_and_reason(name: str) -> None:
    """Each broken policy raises one issue with the exact line, column and reason."""
    with pytest.raises(PolicyFileError) as caught:
        load_policy(BROKEN / name)
    assert [str(i) for i in caught.value.issues] == [f"{BROKEN / name}:{EXPECTED[name]}"]


def test_policy_check_cli_prints_each_broken_file_and_exits_1() -> None:
    """``relayguard policy check`` prints FILE:LINE:COL: reason per broken file and exits 1."""
    files = [str(BROKEN / n) for n in sorted(EXPECTED)]
    result = CliRunner().invoke(app, ["policy", "check", *files])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{BROKEN / n}:{EXPECTED[n]}" for n in sorted(EXPECTED)]


@pytest.mark.slow
def test_policy_check_subprocess_accepts_the_default_policy() -> None:
    """The installed command accepts the shipped policy, naming its rule count and version."""
    path = ROOT / "policies" / "default.yaml"
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    run = subprocess.run([str(ROOT / ".venv/bin/relayguard"), "policy", "check", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"ok: {path} (6 rules, version {version})"


def test_version_is_sha256_of_file_bytes_and_policy_pickles(default_policy) -> None:  # type: ignore[no-untyped-def]
    """The loaded policy carries the file's sha256 and survives pickling (for a process pool)."""
    raw = (ROOT / "policies" / "default.yaml").read_bytes()
    assert default_policy.version == hashlib.sha256(raw).hexdigest()
    again = pickle.loads(pickle.dumps(default_policy))
    assert again.version == default_policy.version
    assert len(again.rules) == len(default_policy.rules)


def test_alias_bomb_is_refused_quickly() -> None:
    """A billion-laughs document is refused instead of expanded."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        refs = ",".join([f"*{prev}"] * 9)
        lines.append(f"{cur}: &{cur} [{refs}]")
    with pytest.raises(PolicyFileError, match="too large or too deeply nested"):
        parse_policy("\n".join(lines).encode(), "bomb.yaml")


def test_duplicate_key_is_an_error() -> None:
    """A key given twice is refused (YAML would otherwise keep the last silently)."""
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(b"rules: []\nrules: []\n", "dup.yaml")
    assert str(caught.value) == "dup.yaml:2:1: duplicate key 'rules'"


def test_quoted_number_and_unknown_action_are_refused() -> None:
    """Strict types: "2" is not 2, and an action outside deliver/hold/reject is refused."""
    text = b"rules:\n  - name: r\n    then: {action: quarantine, approvals: '2'}\n"
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, "p.yaml")
    reasons = [i.reason for i in caught.value.issues]
    assert reasons == ["rules[0].then.action: Input should be 'deliver', 'hold' or 'reject'",
                       "rules[0].then.approvals: Input should be 1 or 2"]


def test_reference_errors_name_finding_kinds_groups_and_rule_names() -> None:
    """Unknown finding kinds and groups and duplicate rule names are each reported with a position."""
    text = (b"patterns:\n  hospital_number: {regex: 'H[0-9]{7}'}\n"
            b"rules:\n"
            b"  - name: r\n    when: {findings: {kinds: [pattern:hospital_numbr]}}\n"
            b"    then: {action: hold}\n"
            b"  - name: r\n    when: {submitter: {groups: [doctors]}}\n    then: {action: hold}\n")
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, "p.yaml")
    got = [(i.line, i.reason.split(" (known")[0]) for i in caught.value.issues]
    assert got == [(5, "rules[0].when.findings.kinds[0]: unknown finding kind 'pattern:hospital_numbr'"),
                   (7, "rules[1].name: duplicate rule name 'r'"),
                   (8, "rules[1].when.submitter.groups[0]: unknown group 'doctors'")]


def test_reply_requires_reject_and_must_be_one_line() -> None:
    """A reply text on a non-reject rule, or one with a newline, is refused."""
    with pytest.raises(PolicyFileError, match="reply is only used with action: reject"):
        parse_policy(b"rules:\n  - name: r\n    then: {action: hold, reply: 'not allowed'}\n", "p.yaml")
    with pytest.raises(PolicyFileError, match="printable ASCII on one line"):
        parse_policy(b'rules:\n  - name: r\n    then: {action: reject, reply: "a\\r\\nb"}\n', "p.yaml")


def test_empty_match_pattern_is_refused() -> None:
    """A custom pattern that matches the empty string would flag every message; it is refused."""
    with pytest.raises(PolicyFileError, match="matches the empty string"):
        parse_policy(b"patterns:\n  x: {regex: 'a*'}\nrules: []\n", "p.yaml")
