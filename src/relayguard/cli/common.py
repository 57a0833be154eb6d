"""What every command shares: loading settings, failing with one clear line, printing JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from relayguard.config import Settings, load_settings
from relayguard.errors import ConfigError
from relayguard.store import StoredMessage

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (default: $RELAYGUARD_CONFIG).",
                 dir_okay=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and exit ``code``; never a traceback for a user's mistake."""
    # Plain stderr, not Rich: one line stays one line whatever the terminal width.
    sys.stderr.write(f"relayguard: {message}\n")
    raise typer.Exit(code)


def settings_or_exit(path: Path | None) -> Settings:
    """Settings, or exit 2 with the one-line reason (the contract for bad settings)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        fail(str(exc), code=2)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_messages(messages: Sequence[StoredMessage], *, as_json: bool,
                   line: Callable[[StoredMessage], str], empty: str) -> None:
    """A listing of messages: JSON summaries (never bodies), or one ``line`` each."""
    if as_json:
        print_json([m.summary() for m in messages])
        return
    for m in messages:
        typer.echo(line(m))
    if not messages:
        typer.echo(empty)
