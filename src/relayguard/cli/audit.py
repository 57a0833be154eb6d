"""``relayguard audit``: verify the hash chain, export it, read the latest entries."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from relayguard import audit
from relayguard.cli.common import ConfigOption, JsonOption, fail, print_json
from relayguard.cli.quarantine import run_with_store
from relayguard.config import Settings
from relayguard.store import Store

app = typer.Typer(help="Verify and export the tamper-evident audit trail.", no_args_is_help=True)


@app.command()
def verify(config: ConfigOption = None) -> None:
    """Exit 0 when the chain is intact; exit 1 naming the first broken entry."""
    async def work(_: Settings, store: Store) -> tuple[bool, int | None, str]:
        return await audit.verify(store)

    ok, seq, reason = run_with_store(config, work)
    if not ok:
        fail(f"audit trail broken at entry {seq}: {reason}")
    typer.echo(f"audit trail intact: {reason}")


@app.command()
def export(config: ConfigOption = None,
           out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default stdout).",
                                                    dir_okay=False)] = None) -> None:
    """Write every entry as one JSON line, in chain order."""
    async def work(_: Settings, store: Store) -> int:
        if out is None:
            return await audit.export(store, sys.stdout)
        with out.open("w", encoding="utf-8") as fh:
            return await audit.export(store, fh)

    count = run_with_store(config, work)
    if out is not None:
        typer.echo(f"{count} entries written to {out}", err=True)


@app.command("list")
def list_(config: ConfigOption = None, as_json: JsonOption = False,
          limit: Annotated[int, typer.Option(help="Newest entries to show.")] = 50) -> None:
    """The newest entries."""
    async def work(_: Settings, store: Store) -> list[audit.Entry]:
        return await audit.entries(store, limit=limit, newest_first=True)

    entries = run_with_store(config, work)
    if as_json:
        print_json([e.to_json() for e in entries])
        return
    for e in entries:
        typer.echo(f"{e.seq:>6}  {e.at:.0f}  {e.actor:<16} {e.action:<18} {e.object}")
