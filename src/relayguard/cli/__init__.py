"""The ``relayguard`` command: one Typer sub-app per concern, each in its own module."""

from __future__ import annotations

import typer

from relayguard.cli import audit as audit_cli
from relayguard.cli import capture as capture_cli
from relayguard.cli import policy as policy_cli
from relayguard.cli import quarantine as quarantine_cli
from relayguard.cli import queue as queue_cli
from relayguard.cli import report as report_cli
from relayguard.cli import serve as serve_cli
from relayguard.cli import users as users_cli

app = typer.Typer(
    name="relayguard",
    help="Outbound-mail guard for healthcare: an SMTP relay that keeps patient data from leaking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
serve_cli.register(app)
app.add_typer(policy_cli.app, name="policy")
app.add_typer(capture_cli.app, name="capture")
app.add_typer(quarantine_cli.app, name="quarantine")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(users_cli.app, name="users")
app.add_typer(queue_cli.app, name="queue")
app.add_typer(report_cli.app, name="report")


def main() -> None:
    app()
