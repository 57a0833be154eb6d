"""The quarantine, audit and users commands, run as the real ``relayguard`` executable."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from seeding import hold

from relayguard.config import Settings
from relayguard.store import State, Store

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("relayguard"))


def run(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # COLUMNS: rich wraps stderr at 80 columns when it is not a terminal (reported to the lead).
    env = {**os.environ, "RELAYGUARD_STORE__URL": settings.store.url, "COLUMNS": "300"}
    env.pop("RELAYGUARD_CONFIG", None)
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


async def test_users_add_and_list(store: Store, settings: Settings) -> None:
    """users add reads the password from stdin, refuses a short one, lists roles and is audited."""
    assert run(settings, "users", "add", "rita", "--role", "reviewer", "--email", "rita@practice.nhs.uk",
               "--password-stdin", stdin="long enough password\n").returncode == 0
    assert_one_line_error(run(settings, "users", "add", "x", "--role", "admin", "--password-stdin",
                              stdin="short\n"), "at least 8 characters")
    listed = json.loads(run(settings, "users", "list", "--json").stdout)
    assert listed == [{"name": "rita", "role": "reviewer", "email": "rita@practice.nhs.uk",
                       "locked_until": None}]
    exported = [json.loads(x) for x in run(settings, "audit", "export").stdout.splitlines()]
    assert [(e["action"], e["object"]) for e in exported] == [("user_added", "user:rita")]


async def test_list_json_is_an_array_of_held(store: Store, settings: Settings, people: dict) -> None:
    """quarantine list --json prints exactly the held messages; --all adds the others."""
    held = await hold(store)
    other = await hold(store)
    await store.set_state(other, State.REJECTED, expect=[State.HELD])
    data = json.loads(run(settings, "quarantine", "list", "--json").stdout)
    assert isinstance(data, list)
    assert [m["id"] for m in data] == [held]
    assert data[0]["state"] == "held"
    assert data[0]["rules"] == ["nhs-to-freemail"]
    everything = json.loads(run(settings, "quarantine", "list", "--json", "--all").stdout)
    assert {m["id"] for m in everything} == {held, other}


async def test_cli_approve_enforces_rules(store: Store, settings: Settings, people: dict) -> None:
    """CLI approval as sender, as submitter or of an unknown id fails in one line; a reviewer succeeds."""
    qid = await hold(store, submitter="rob", mail_from="rob@practice.nhs.uk")
    assert_one_line_error(run(settings, "quarantine", "approve", qid, "--as", "alice"), "sender role")
    assert_one_line_error(run(settings, "quarantine", "approve", qid, "--as", "rob"), "four-eyes")
    assert_one_line_error(run(settings, "quarantine", "approve", "nope", "--as", "rita"), "no message nope")
    assert_one_line_error(run(settings, "quarantine", "approve", qid, "--as", "ghost"), "no user 'ghost'")
    ok = run(settings, "quarantine", "approve", qid, "--as", "rita", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "queued"
    shown = json.loads(run(settings, "quarantine", "show", qid, "--json").stdout)
    assert shown["approvals"] == ["rita"]
    assert [(h["action"], h["actor"], h["details"]["via"]) for h in shown["history"]] == [
        ("approved", "rita", "cli")]
    assert_one_line_error(run(settings, "quarantine", "reject", qid, "--as", "ada", "--reason", "late"),
                          "is queued, not held")


async def test_cli_reject(store: Store, settings: Settings, people: dict) -> None:
    """CLI rejection records the reason and the reviewer."""
    qid = await hold(store)
    proc = run(settings, "quarantine", "reject", qid, "--as", "rob", "--reason", "use nhs.net")
    assert proc.returncode == 0, proc.stderr
    assert (await store.get(qid, with_raw=False)).state is State.REJECTED


async def test_audit_verify_detects_an_edited_row(store: Store, settings: Settings, people: dict,
                                                  tmp_path: Path) -> None:
    """audit verify exits 0 on an intact chain and 1 naming the entry edited directly in SQLite."""
    for _ in range(3):
        qid = await hold(store)
        await_ok = run(settings, "quarantine", "reject", qid, "--as", "rita", "--reason", "no")
        assert await_ok.returncode == 0
    good = run(settings, "audit", "verify")
    assert good.returncode == 0
    assert "intact" in good.stdout
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("UPDATE audit SET details='{\"reason\":\"fine\"}' WHERE seq=2")
    bad = run(settings, "audit", "verify")
    assert_one_line_error(bad, "broken at entry 2")
