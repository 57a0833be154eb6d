"""The ``relayguard`` command: one Typer sub-app per concern, each in its own module."""

from __future__ import annotations

import typer

from relayguard.cli import policy as policy_cli
from relayguard.cli import serve as serve_cli

app = typer.Typer(
    name="relayguard",
    help="Outbound-mail guard for healthcare: an SMTP relay that keeps patient data from leaking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
serve_cli.register(app)
app.add_typer(policy_cli.app, name="policy")


def main() -> None:
    app()
