"""``relayguard capture``: the dev-mode mailbox that stands in for an upstream (``make run``)."""

from __future__ import annotations

import asyncio
import datetime as dt
from email import message_from_bytes
from email.policy import compat32
from typing import Any

import typer
from rich.table import Table

from relayguard.cli.common import ConfigOption, JsonOption, out_console, print_json, settings_or_exit
from relayguard.store import open_store

app = typer.Typer(help="Look at mail kept by dev mode (no upstream configured).", no_args_is_help=True)


async def _list(url: str, limit: int) -> list[dict[str, Any]]:
    store = open_store(url)
    try:
        await store.migrate()
        return await store.list_capture(limit=limit)
    finally:
        await store.close()


@app.command("list")
def list_(config: ConfigOption = None, json_out: JsonOption = False,
          limit: int = typer.Option(20, help="How many of the newest to show.")) -> None:
    """The newest captured messages: who sent them, to whom, and their subject."""
    settings = settings_or_exit(config)
    rows = asyncio.run(_list(settings.store.url, limit))
    for row in rows:
        row["subject"] = message_from_bytes(row.pop("raw"), policy=compat32).get("Subject", "")
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"Capture mailbox ({len(rows)} newest)")
    for col in ("id", "when", "queue id", "from", "to", "subject"):
        table.add_column(col)
    for r in rows:
        when = dt.datetime.fromtimestamp(r["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(r["id"]), when, r["queue_id"], r["mail_from"] or "<>",
                      ", ".join(r["rcpts"][:3]) + (" …" if len(r["rcpts"]) > 3 else ""), str(r["subject"]))
    out_console.print(table)
