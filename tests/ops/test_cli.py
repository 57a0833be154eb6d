"""The queue and report commands, run as the real ``relayguard`` executable against a seeded store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relayguard import audit
from relayguard.clock import ManualClock
from relayguard.store import State, Store
from tests.ops.conftest import HOLD, NHS, accept, finish

pytestmark = pytest.mark.slow
EXE = str(Path(sys.executable).with_name("relayguard"))


def run(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAYGUARD_STORE__URL": store_url, "COLUMNS": "300", "USER": "opsuser"}
    env.pop("RELAYGUARD_CONFIG", None)
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode != 0 and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


async def test_list_and_show_never_print_the_body(store: Store, store_url: str) -> None:
    """queue list/show give metadata and per-recipient results, never the message content."""
    queued = await accept(store, rcpts=("a@nhs.net", "b@nhs.net"))
    await finish(store, queued, State.QUEUED, code=451, reply="451 4.3.0 try later")
    await finish(store, await accept(store), State.DELIVERED)
    listed = json.loads(run(store_url, "queue", "list", "--json").stdout)
    assert [m["id"] for m in listed] == [queued]
    delivered = json.loads(run(store_url, "queue", "list", "--state", "delivered", "--json").stdout)
    assert len(delivered) == 1 and delivered[0]["state"] == "delivered"
    shown = json.loads(run(store_url, "queue", "show", queued, "--json").stdout)
    assert shown["attempts"] == 1 and shown["results"]["a@nhs.net"]["code"] == 451
    text = run(store_url, "queue", "show", queued)
    assert text.returncode == 0 and "rcpt:" in text.stdout and "451" in text.stdout
    assert "seen today" not in text.stdout + json.dumps(shown)
    one_line_error(run(store_url, "queue", "show", "nope"), "no message nope")


async def test_retry_makes_deferred_mail_due_now(store: Store, store_url: str, clock: ManualClock) -> None:
    """queue retry ID and --all-deferred set the next attempt to now, audited; a bad id is one line."""
    ids = [await accept(store) for _ in range(2)]
    for queue_id in ids:
        await finish(store, queue_id, State.QUEUED, code=451, reply="451 later")
    before = [await store.get(i) for i in ids]
    assert all(m.next_attempt_at == clock.now() + 60 for m in before)
    proc = run(store_url, "queue", "retry", "--all-deferred", "--as", "rita")
    assert proc.returncode == 0 and "2 message(s)" in proc.stdout
    after = [await store.get(i) for i in ids]
    assert all((m.next_attempt_at or 0) <= datetime.now(UTC).timestamp() for m in after)
    [entry] = await audit.entries(store, action="retried")
    assert entry.actor == "rita" and entry.details == {"via": "cli", "count": 2}
    await finish(store, ids[0], State.DELIVERED)
    one_line_error(run(store_url, "queue", "retry", ids[0]), "is delivered, not queued")
    one_line_error(run(store_url, "queue", "retry"), "give a queue id or --all-deferred")


async def test_hold_moves_queued_mail_to_quarantine(store: Store, store_url: str) -> None:
    """queue hold moves a queued message to held, audited under the OS user; held mail is refused."""
    queue_id = await accept(store)
    proc = run(store_url, "queue", "hold", queue_id)
    assert proc.returncode == 0, proc.stderr
    assert (await store.get(queue_id)).state is State.HELD
    [entry] = [e for e in await audit.entries(store, obj=queue_id) if e.action == "held"]
    assert entry.actor == "opsuser" and entry.details["via"] == "cli"
    one_line_error(run(store_url, "queue", "hold", queue_id), "is held, not queued")


async def test_report_daily_counts_per_submitter(store: Store, store_url: str, clock: ManualClock) -> None:
    """report daily --json counts sent, held, released, rejected and bounced per submitter."""
    a, b = "letters@trust.nhs.uk", "reception@oakfield.nhs.uk"
    for _ in range(3):
        await finish(store, await accept(store, submitter=a), State.DELIVERED)
    await finish(store, await accept(store, submitter=b), State.BOUNCED, code=550)
    await store.set_state(await accept(store, submitter=b), State.REFUSED, expect=[State.QUEUED])
    released = await accept(store, submitter=b, decision=HOLD)
    await store.set_state(released, State.QUEUED, expect=[State.HELD])
    await accept(store, submitter=b, decision=HOLD)
    day = datetime.fromtimestamp(clock.now(), UTC).date().isoformat()
    data = json.loads(run(store_url, "report", "daily", "--date", day, "--json").stdout)
    by = {x["submitter"]: x for x in data["submitters"]}
    assert by[a] == {"submitter": a, "sent": 3, "held": 0, "released": 0, "rejected": 0, "bounced": 0,
                     "waiting": 0}
    assert by[b] == {"submitter": b, "sent": 0, "held": 2, "released": 1, "rejected": 1, "bounced": 1,
                     "waiting": 2}
    assert data["total"]["sent"] == 3 and data["total"]["held"] == 2
    table = run(store_url, "report", "daily", "--date", day)
    assert table.returncode == 0 and a in table.stdout and NHS not in table.stdout
    empty = json.loads(run(store_url, "report", "daily", "--date", "2020-01-01", "--json").stdout)
    assert empty["submitters"] == []
    one_line_error(run(store_url, "report", "daily", "--date", "yesterday"), "--date must be YYYY-MM-DD")
