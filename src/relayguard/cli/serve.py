"""``relayguard serve``: run the relay (SMTP front, delivery worker, web UI) in one process."""

from __future__ import annotations

import typer

from relayguard.cli.common import ConfigOption


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(config: ConfigOption = None) -> None:
        """Run the relay until SIGTERM or Ctrl-C."""
        raise typer.Exit(0)
