"""``relayguard report daily``: what each submitter sent on one day, and what became of it.

Columns count client messages *accepted that day* (UTC) by their state now: ``sent`` delivered,
``held`` held on arrival (whatever happened next), ``released`` of those, let go by a reviewer,
``rejected`` refused by policy or rejected by a reviewer, ``bounced`` returned to the sender, and
``waiting`` still queued or held. Metadata only, so it works after retention has purged bodies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from relayguard.cli.common import ConfigOption, JsonOption, fail, out_console, print_json
from relayguard.cli.quarantine import run_with_store
from relayguard.config import Settings
from relayguard.decision import Action
from relayguard.store import State, Store, ops

app = typer.Typer(help="Reports on the mail flow.", no_args_is_help=True)
COLUMNS = ("sent", "held", "released", "rejected", "bounced", "waiting")


@dataclass(slots=True)
class Line:
    submitter: str
    sent: int = 0
    held: int = 0
    released: int = 0
    rejected: int = 0
    bounced: int = 0
    waiting: int = 0

    def add(self, *, state: str, action: str, count: int) -> None:
        if action == Action.HOLD.value:
            self.held += count
            if state in ops.RELEASED_STATES:
                self.released += count
        if state == State.DELIVERED.value:
            self.sent += count
        elif state in (State.REFUSED.value, State.REJECTED.value):
            self.rejected += count
        elif state == State.BOUNCED.value:
            self.bounced += count
        elif state in (State.QUEUED.value, State.HELD.value, State.APPROVED.value):
            self.waiting += count


async def daily(store: Store, day: date) -> list[Line]:
    """One line per submitter for ``day`` (UTC), busiest first, then a TOTAL line."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    rows = await ops.message_counts(store, since=start, until=start + 86400, origin="client")
    lines: dict[str, Line] = {}
    total = Line("TOTAL")
    for row in rows:
        for line in (lines.setdefault(row.submitter, Line(row.submitter)), total):
            line.add(state=row.state, action=row.action, count=row.count)
    ordered = sorted(lines.values(), key=lambda x: (-sum(getattr(x, c) for c in COLUMNS), x.submitter))
    return [*ordered, total]


def _parse_day(value: str | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not {value!r}")


@app.command("daily")
def daily_cmd(config: ConfigOption = None, as_json: JsonOption = False,
              day: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD, UTC (default: today).")]
              = None,
              yesterday: Annotated[bool, typer.Option(help="The day before --date.")] = False) -> None:
    """Sent, held, released, rejected and bounced per submitter for one day."""
    when = _parse_day(day) - (timedelta(days=1) if yesterday else timedelta())

    async def work(_: Settings, store: Store) -> list[Line]:
        return await daily(store, when)

    lines = run_with_store(config, work)
    if as_json:
        print_json({"date": when.isoformat(), "submitters": [asdict(x) for x in lines[:-1]],
                    "total": asdict(lines[-1])})
        return
    table = Table(title=f"relayguard: {when.isoformat()} (UTC)")
    table.add_column("submitter")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for line in lines:
        table.add_row(line.submitter, *(str(getattr(line, c)) for c in COLUMNS),
                      style="bold" if line.submitter == "TOTAL" else None)
    out_console.print(table)
