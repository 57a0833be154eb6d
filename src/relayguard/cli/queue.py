"""``relayguard queue``: look at the delivery queue and nudge it, from the host.

``list`` and ``show`` print metadata, per-recipient results and the last error, never a body.
``retry`` makes queued mail due now; ``hold`` moves a queued message into quarantine. Both are
audit entries under ``--as USER`` (default: the operating-system user), with ``via: cli``.
"""

from __future__ import annotations

import getpass
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from relayguard import audit
from relayguard.cli.common import ConfigOption, JsonOption, fail, print_json, print_messages
from relayguard.cli.quarantine import IdArg, run_with_store
from relayguard.config import Settings
from relayguard.store import State, Store, StoredMessage, ops

app = typer.Typer(help="The delivery queue: list, show, retry, hold.", no_args_is_help=True)

ActorOption = Annotated[str | None, typer.Option(
    "--as", help="Who you are, for the audit trail (default: your OS user).")]


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def _line(m: StoredMessage) -> str:
    age = (time.time() - m.created_at) / 60
    error = (m.last_error or "")[:60]
    return (f"{m.id}  {m.state.value:<9} {age:>6.0f}m  {m.origin:<6} {m.submitter.name}  "
            f"{len(m.envelope.rcpt_tos)} rcpt  attempts {m.attempts}  {error}")


@app.command("list")
def list_(config: ConfigOption = None, as_json: JsonOption = False,
          state: Annotated[State | None, typer.Option(help="Only this state (default: queued).")] = None,
          limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 500) -> None:
    """List queued messages (or those in --state), oldest first."""
    async def work(_: Settings, store: Store) -> list[StoredMessage]:
        return await store.list_messages(states=[state or State.QUEUED], limit=limit, newest_first=False)

    print_messages(run_with_store(config, work), as_json=as_json, line=_line,
                   empty=f"no {(state or State.QUEUED).value} messages")


def _details(m: StoredMessage) -> dict[str, Any]:
    data = m.summary()
    data.update(rcpts=list(m.envelope.rcpt_tos), results=m.results, updated_at=m.updated_at,
                next_attempt_at=m.next_attempt_at, delivered_at=m.delivered_at,
                purged_at=m.purged_at)
    return data


@app.command()
def show(queue_id: IdArg, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One message's metadata, per-recipient results, attempts and last error (never its content)."""
    async def work(_: Settings, store: Store) -> dict[str, Any]:
        return _details(await store.get(queue_id, with_raw=False))

    data = run_with_store(config, work)
    if as_json:
        print_json(data)
        return
    for key in ("id", "state", "origin", "mail_from", "submitter", "subject", "size", "action",
                "attempts", "last_error"):
        typer.echo(f"{key + ':':<16}{data[key] if data[key] is not None else '-'}")
    for key in ("created_at", "updated_at", "next_attempt_at", "delivered_at", "purged_at"):
        typer.echo(f"{key + ':':<16}{_when(data[key])}")
    for rcpt in data["rcpts"]:
        result = data["results"].get(rcpt, {})
        typer.echo(f"{'rcpt:':<16}{rcpt}  {result.get('state', 'pending')}  {result.get('code', '')} "
                   f"{str(result.get('reply', ''))[:100]}")


@app.command()
def retry(queue_id: Annotated[str | None, typer.Argument(help="Queue id (or use --all-deferred).")] = None,
          all_deferred: Annotated[bool, typer.Option("--all-deferred",
                                                     help="Every queued message already tried.")] = False,
          as_user: ActorOption = None, config: ConfigOption = None) -> None:
    """Make a queued message (or every deferred one) due for delivery now."""
    if (queue_id is None) == (not all_deferred):
        fail("give a queue id or --all-deferred (not both)")

    async def work(_: Settings, store: Store) -> int:
        now = store.clock.now()
        async with store.begin() as conn:
            count = await ops.make_due(conn, now=now, queue_id=queue_id)
            if count:
                await audit.append(conn, at=now, actor=as_user or getpass.getuser(), action="retried",
                                   obj=queue_id or "*", details={"via": "cli", "count": count})
        if queue_id is not None and not count:
            message = await store.get(queue_id, with_raw=False)
            fail(f"message {queue_id} is {message.state.value}, not queued")
        return count

    count = run_with_store(config, work)
    typer.echo(f"{count} message(s) due for delivery now")


@app.command()
def hold(queue_id: IdArg, as_user: ActorOption = None, config: ConfigOption = None) -> None:
    """Move a queued message into quarantine (held), so a reviewer must release it."""
    actor = as_user or getpass.getuser()

    async def work(_: Settings, store: Store) -> None:
        now = store.clock.now()
        async with store.begin() as conn:
            if await ops.hold_queued(conn, queue_id, now=now):
                await audit.append(conn, at=now, actor=actor, action=audit.AuditAction.HELD, obj=queue_id,
                                   details={"via": "cli", "from": State.QUEUED.value})
                return
        message = await store.get(queue_id, with_raw=False)
        if message.state is State.QUEUED:
            fail(f"message {queue_id} is being delivered right now; try again in a moment")
        fail(f"message {queue_id} is {message.state.value}, not queued")

    run_with_store(config, work)
    typer.echo(f"{queue_id}: held by {actor}")
