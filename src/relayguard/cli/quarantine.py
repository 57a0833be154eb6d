"""``relayguard quarantine``: list, show, approve and reject held mail from the host.

Acting ``--as USER`` is recorded under that name in the audit trail (with ``via: cli``) and the
same rules apply as on the web: the reviewer role, and never the message's own submitter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from relayguard import audit, quarantine
from relayguard.cli.common import ConfigOption, JsonOption, fail, print_json, print_messages, settings_or_exit
from relayguard.config import Settings
from relayguard.errors import RelayguardError
from relayguard.store import State, Store, StoredMessage, open_store

app = typer.Typer(help="List and review held mail.", no_args_is_help=True)
T = TypeVar("T")

IdArg = Annotated[str, typer.Argument(help="Queue id, as given in the 250 reply or the held notice.")]
AsOption = Annotated[str, typer.Option("--as", help="The reviewer you act as (recorded in the audit).")]


def run_with_store(config: Any, work: Callable[[Settings, Store], Awaitable[T]]) -> T:
    """Open and migrate the store, run ``work``, close it; errors become one line and exit 1."""
    settings = settings_or_exit(config)

    async def main() -> T:
        store = open_store(settings.store.url, synchronous=settings.store.synchronous)
        try:
            await store.migrate()
            return await work(settings, store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (RelayguardError, ValueError) as exc:
        fail(str(exc))


def _age(created_at: float) -> str:
    hours = (time.time() - created_at) / 3600
    return f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.0f}d"


def _line(m: StoredMessage) -> str:
    rules = ",".join(m.decision.rules) or "-"
    return (f"{m.id}  {m.state.value:<9} {_age(m.created_at):>5}  {m.submitter.name}  "
            f"{len(m.envelope.rcpt_tos)} rcpt  {rules}  {m.subject or ''}")


@app.command("list")
def list_(config: ConfigOption = None, as_json: JsonOption = False,
          all_: Annotated[bool, typer.Option("--all", help="Every client message, not only held.")] = False,
          limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 500) -> None:
    """List held messages (with --all: every state)."""
    async def work(_: Settings, store: Store) -> list[StoredMessage]:
        states = None if all_ else [State.HELD]
        return await store.list_messages(states=states, origin="client", limit=limit)

    print_messages(run_with_store(config, work), as_json=as_json, line=_line,
                   empty="no held messages" if not all_ else "no messages")


@app.command()
def show(queue_id: IdArg, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """One message's metadata, findings, approvals and audit history (never its content)."""
    async def work(_: Settings, store: Store) -> dict[str, Any]:
        message = await store.get(queue_id, with_raw=False)
        data = message.summary()
        data["rcpts"] = list(message.envelope.rcpt_tos)
        data["approvals_required"] = message.decision.approvals_required
        data["approver_role"] = message.decision.approver_role
        data["approvals"] = await quarantine.approvals(store, queue_id)
        data["history"] = [e.to_json() for e in await audit.entries(store, obj=queue_id)]
        return data

    data = run_with_store(config, work)
    if as_json:
        print_json(data)
        return
    for key in ("id", "state", "mail_from", "submitter", "subject", "rules", "approvals_required",
                "approver_role", "approvals"):
        typer.echo(f"{key + ':':<20}{data[key]}")
    typer.echo(f"{'rcpts:':<20}{', '.join(data['rcpts'])}")
    for f in data["findings"]:
        typer.echo(f"{'finding:':<20}{f['kind']} ×{f['count']} at {f['where']}")
    for e in data["history"]:
        typer.echo(f"{'history:':<20}{e['action']} by {e['actor']}")


@app.command()
def approve(queue_id: IdArg, as_user: AsOption, config: ConfigOption = None,
            as_json: JsonOption = False) -> None:
    """Approve a held message as USER (the last approval needed releases it)."""
    async def work(settings: Settings, store: Store) -> quarantine.ApproveResult:
        user = await quarantine.user_or_fail(store, as_user)
        return await quarantine.approve(store, settings, queue_id, user, via="cli")

    result = run_with_store(config, work)
    if as_json:
        print_json({"id": queue_id, "state": result.state.value, "approvals": result.approvals,
                    "required": result.required})
    elif result.state is State.QUEUED:
        typer.echo(f"{queue_id}: approved by {as_user}, released for delivery")
    else:
        typer.echo(f"{queue_id}: approved by {as_user} ({result.approvals} of {result.required}); "
                   "still held for another reviewer")


@app.command()
def reject(queue_id: IdArg, as_user: AsOption,
           reason: Annotated[str, typer.Option(help="Why; the sender is told.")],
           config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Reject a held message as USER, with a reason."""
    async def work(settings: Settings, store: Store) -> None:
        user = await quarantine.user_or_fail(store, as_user)
        await quarantine.reject(store, settings, queue_id, user, reason=reason, via="cli")

    run_with_store(config, work)
    if as_json:
        print_json({"id": queue_id, "state": State.REJECTED.value})
    else:
        typer.echo(f"{queue_id}: rejected by {as_user}")
