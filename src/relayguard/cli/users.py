"""``relayguard users``: local accounts for SMTP AUTH and the web UI."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from relayguard import audit
from relayguard.auth import Role, hash_password
from relayguard.cli.common import ConfigOption, JsonOption, fail, print_json
from relayguard.cli.quarantine import run_with_store
from relayguard.config import Settings
from relayguard.store import Store, User

app = typer.Typer(help="Manage local accounts.", no_args_is_help=True)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@app.command()
def add(name: Annotated[str, typer.Argument(help="Account name (the SMTP AUTH and web login).")], *,
        role: Annotated[Role, typer.Option(help="sender, reviewer or admin.")],
        email: Annotated[str | None, typer.Option(help="The user's own address.")] = None,
        password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                     help="Read the password as one line of stdin.")] = False,
        replace: Annotated[bool, typer.Option("--replace", help="Reset an existing account.")] = False,
        config: ConfigOption = None) -> None:
    """Add an account (password from a hidden prompt, or --password-stdin)."""
    try:
        hashed = hash_password(_read_password(password_stdin))
    except ValueError as exc:
        fail(str(exc))

    async def work(_: Settings, store: Store) -> None:
        await store.add_user(name=name, password_hash=hashed, role=role.value, email=email, replace=replace)
        async with store.begin() as conn:
            # The OS account is who acted: there is no relayguard login on the host.
            await audit.append(conn, at=store.clock.now(), actor=f"cli:{getpass.getuser()}",
                               action=audit.AuditAction.USER_ADDED, obj=f"user:{name}",
                               details={"role": role.value, "replaced": replace})

    run_with_store(config, work)
    typer.echo(f"user {name} added with role {role.value}")


@app.command("list")
def list_(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every account with its role (never the hashes)."""
    async def work(_: Settings, store: Store) -> list[User]:
        return await store.list_users()

    users = run_with_store(config, work)
    rows = [{"name": u.name, "role": u.role, "email": u.email, "locked_until": u.locked_until}
            for u in users]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        locked = "  locked" if r["locked_until"] else ""
        typer.echo(f"{r['name']:<20} {r['role']:<9} {r['email'] or ''}{locked}")
