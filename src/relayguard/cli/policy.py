"""``relayguard policy``: check, explain, test and replay policies (filled in by the policy work)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Validate, explain and dry-run policies.", no_args_is_help=True)
