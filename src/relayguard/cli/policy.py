"""``relayguard policy``: check, explain, test and replay policies."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.panel import Panel
from rich.progress import Progress
from rich.table import Table

from relayguard.cli.common import (
    ConfigOption,
    JsonOption,
    err_console,
    fail,
    out_console,
    print_json,
    settings_or_exit,
)
from relayguard.config import ScanSettings, Settings
from relayguard.decision import Decision, Envelope, Submitter, SubmitterKind
from relayguard.message import parse_address_list, split_header_block
from relayguard.policy import LoadedPolicy, PolicyFileError, decide, load_policy

if TYPE_CHECKING:
    from relayguard.store import Store

app = typer.Typer(help="Validate, explain and dry-run policies.", no_args_is_help=True)

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", "-p", help="Policy file (default: the one in the settings).", dir_okay=False),
]


def _policy_or_exit(path: Path | None, config: Path | None) -> LoadedPolicy:
    target = path if path is not None else settings_or_exit(config).policy.path
    try:
        return load_policy(target)
    except PolicyFileError as exc:
        for issue in exc.issues:  # one unwrapped line each, so editors can jump to FILE:LINE:COL
            err_console.print(f"relayguard: invalid policy: {issue}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _scan_limits(config: Path | None) -> ScanSettings:
    return settings_or_exit(config).scan


def header_envelope(raw: bytes, mail_from: str | None = None,
                    rcpts: list[str] | None = None) -> Envelope:
    """The envelope a client would most likely have used: From, and To + Cc + Bcc."""
    block = split_header_block(raw)

    def addresses(*names: str) -> list[str]:
        return [a for f in block.fields if f.lname in names for a in parse_address_list(f.value)[0]]

    if mail_from is None:
        mail_from = next(iter(addresses("from")), "")
    if not rcpts:
        rcpts = list(dict.fromkeys(addresses("to", "cc", "bcc")))
    return Envelope(mail_from, tuple(rcpts))


def _submitter(name: str | None, envelope: Envelope) -> Submitter:
    if name:
        return Submitter(name, SubmitterKind.USER)
    return Submitter(envelope.mail_from, SubmitterKind.NETWORK, "127.0.0.1")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror or exc}")


# --- check ----------------------------------------------------------------------------------


@app.command()
def check(files: Annotated[list[Path], typer.Argument(help="Policy files to check.")]) -> None:
    """Check policy files; exit 1 with FILE:LINE:COL: reason for each problem."""
    broken = 0
    for path in files:
        try:
            pol = load_policy(path)
        except PolicyFileError as exc:
            broken += 1
            for issue in exc.issues:
                out_console.print(str(issue), markup=False, soft_wrap=True)
            continue
        out_console.print(f"ok: {path} ({len(pol.rules)} rules, version {pol.version[:8]})", markup=False)
    raise typer.Exit(1 if broken else 0)


# --- explain --------------------------------------------------------------------------------


def _decision_panel(decision: Decision, envelope: Envelope) -> Panel:
    colour = {"deliver": "green", "hold": "yellow", "reject": "red"}[decision.action.value]
    lines = [f"[bold {colour}]{decision.action.value.upper()}[/]"
             + (f"  rewrite: [bold]{decision.rewrite.value}[/]" if decision.rewrite else ""),
             f"envelope: {envelope.mail_from or '<>'} → {len(envelope.rcpt_tos)} recipient(s)",
             "rules: " + (", ".join(decision.rules) or "none matched")]
    if decision.tag_subject:
        lines.append("subject tags: " + " ".join(decision.tag_subject))
    if decision.reply:
        lines.append(f"reply: {decision.reply}")
    table = Table("finding", "count", "where", "sample / reason", box=None)
    for f in decision.findings:
        table.add_row(f.kind, str(f.count), f.where, f.sample or f.reason or "")
    body = Table.grid()
    body.add_row("\n".join(lines))
    if decision.findings:
        body.add_row(table)
    return Panel(body, title="relayguard policy explain", subtitle=f"policy {decision.policy_version[:8]}")


@app.command()
def explain(
    message: Annotated[Path, typer.Argument(help="The message (.eml) to decide.", dir_okay=False)],
    *,
    policy: PolicyOption = None,
    mail_from: Annotated[str | None, typer.Option("--from", help="Envelope sender.")] = None,
    rcpt: Annotated[list[str] | None, typer.Option("--to", help="Envelope recipient (repeat).")] = None,
    submitter: Annotated[str | None, typer.Option(help="Authenticated user to decide as.")] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show the decision for a message without sending it."""
    pol = _policy_or_exit(policy, config)
    raw = _read(message)
    envelope = header_envelope(raw, mail_from, rcpt)
    decision = decide(raw, envelope, _submitter(submitter, envelope), pol, limits=_scan_limits(config))
    if as_json:
        print_json(decision.to_json())
    else:
        out_console.print(_decision_panel(decision, envelope))


# --- test -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    decision: Decision | None
    problems: tuple[str, ...]


def _case_problems(want: dict[str, Any], got: Decision) -> list[str]:
    problems = []
    if got.action.value != want.get("action", got.action.value):
        problems.append(f"action {got.action.value}, expected {want['action']}")
    rewrite = got.rewrite.value if got.rewrite else None
    if "rewrite" in want and rewrite != want["rewrite"]:
        problems.append(f"rewrite {rewrite}, expected {want['rewrite']}")
    missing = set(want.get("findings") or ()) - {f.kind for f in got.findings}
    if missing:
        problems.append(f"no {', '.join(sorted(missing))} finding")
    unmatched = [r for r in want.get("rules") or () if r not in got.rules]
    if unmatched:
        problems.append(f"rule {', '.join(unmatched)} did not match")
    return problems


def run_case(folder: Path, name: str, want: dict[str, Any], pol: LoadedPolicy,
             limits: ScanSettings) -> CaseResult:
    """Decide one case of a test folder and compare it with its expectations."""
    path = folder / f"{name}.eml"
    if not path.is_file():
        return CaseResult(name, None, (f"{path.name} not found",))
    raw = path.read_bytes()
    envelope = header_envelope(raw, want.get("from"), want.get("to"))
    if want.get("envelope_extra"):
        envelope = Envelope(envelope.mail_from, (*envelope.rcpt_tos, *want["envelope_extra"]))
    decision = decide(raw, envelope, _submitter(want.get("submitter"), envelope), pol, limits=limits)
    return CaseResult(name, decision, tuple(_case_problems(want, decision)))


def _load_expected(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load((folder / "expected.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{folder / 'expected.yaml'}: {exc}")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        fail(f"{folder / 'expected.yaml'}: expected a mapping of case name → expectations")
    return data


@app.command("test")
def run_tests(
    folder: Annotated[Path, typer.Argument(help="Folder of .eml files with an expected.yaml.",
                                           file_okay=False)],
    *,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Run a folder of example messages against their expected decisions."""
    pol = _policy_or_exit(policy, config)
    limits = _scan_limits(config)
    cases = sorted(_load_expected(folder).items())
    results = [run_case(folder, name, want, pol, limits) for name, want in cases]
    failed = sum(1 for r in results if r.problems)
    if as_json:
        print_json([{"case": r.name, "ok": not r.problems, "problems": list(r.problems),
                     "decision": r.decision.to_json() if r.decision else None} for r in results])
    else:
        table = Table("case", "result", "action", "rewrite", "rules / problems",
                      title=f"{folder} against {pol.source}")
        for r in results:
            d = r.decision
            table.add_row(r.name, "[red]FAIL[/]" if r.problems else "[green]pass[/]",
                          d.action.value if d else "-", (d.rewrite.value if d and d.rewrite else "-"),
                          "; ".join(r.problems) or ", ".join(d.rules if d else ()))
        out_console.print(table)
        out_console.print(f"{len(results) - failed}/{len(results)} cases pass")
    raise typer.Exit(1 if failed else 0)


# --- replay ---------------------------------------------------------------------------------

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str) -> float:
    """``7d``, ``12h``, ``30m``, ``2w`` → seconds."""
    number, unit = value[:-1], value[-1:].lower()
    if unit not in _UNITS or not number.isdigit():
        raise typer.BadParameter("use a number and a unit: 30m, 12h, 7d, 2w", param_hint="--since")
    return int(number) * _UNITS[unit]


@dataclass(frozen=True, slots=True)
class Change:
    """A stored message whose decision would differ under the candidate policy."""

    id: str
    created_at: float
    submitter: str
    before: Decision
    after: Decision

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "submitter": self.submitter,
                "before": _outcome(self.before), "after": _outcome(self.after),
                "rules_added": [r for r in self.after.rules if r not in self.before.rules],
                "rules_removed": [r for r in self.before.rules if r not in self.after.rules]}


def _outcome(d: Decision) -> dict[str, Any]:
    return {"action": d.action.value, "rewrite": d.rewrite.value if d.rewrite else None,
            "rules": list(d.rules)}


def _differs(a: Decision, b: Decision) -> bool:
    return (a.action, a.rewrite, a.rules, a.tag_subject) != (b.action, b.rewrite, b.rules, b.tag_subject)


async def replay_changes(store: Store, pol: LoadedPolicy, *, since: float, limits: ScanSettings,
                         progress: Progress | None = None) -> tuple[int, list[Change]]:
    """(messages re-decided, those whose decision changes) for everything stored since ``since``."""
    task = progress.add_task("re-deciding", total=await store.count_since(since)) if progress else None
    seen, changes = 0, []
    async for stored in store.iter_messages(since=since):
        seen += 1
        after = decide(stored.raw or b"", stored.envelope, stored.submitter, pol, limits=limits)
        if _differs(stored.decision, after):
            changes.append(Change(stored.id, stored.created_at, stored.submitter.name,
                                  stored.decision, after))
        if progress is not None and task is not None:
            progress.advance(task)
    return seen, changes


def _changes_table(changes: list[Change]) -> Table:
    table = Table("queue id", "submitter", "before", "after", "rules added / removed")
    for c in changes:
        added = [f"+{r}" for r in c.to_json()["rules_added"]]
        removed = [f"-{r}" for r in c.to_json()["rules_removed"]]
        table.add_row(c.id, c.submitter, _short(c.before), _short(c.after), " ".join(added + removed))
    return table


def _short(d: Decision) -> str:
    return d.action.value + (f" +{d.rewrite.value}" if d.rewrite else "")


@app.command()
def replay(
    *,
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The candidate policy.", dir_okay=False)],
    since: Annotated[str, typer.Option(help="How far back: 30m, 12h, 7d, 2w.")] = "7d",
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Re-decide stored messages under a candidate policy and list what would change."""
    # The store (SQLAlchemy) is imported only here so that check/explain start quickly.
    from relayguard.cli.quarantine import run_with_store  # noqa: PLC0415

    start = time.time() - parse_since(since)
    pol = _policy_or_exit(policy, config)

    async def work(settings: Settings, store: Store) -> tuple[int, list[Change]]:
        if as_json:
            return await replay_changes(store, pol, since=start, limits=settings.scan)
        with Progress(console=err_console, transient=True) as bar:
            return await replay_changes(store, pol, since=start, limits=settings.scan, progress=bar)

    seen, changes = run_with_store(config, work)
    if as_json:
        print_json({"policy_version": pol.version, "since": since, "messages": seen,
                    "changed": [c.to_json() for c in changes]})
        return
    if changes:
        out_console.print(_changes_table(changes))
    out_console.print(f"{len(changes)} of {seen} message(s) since {since} would be decided differently "
                      f"under {pol.source} (version {pol.version[:8]})")
