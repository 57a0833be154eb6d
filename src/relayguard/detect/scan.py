"""``scan_message``: every part of a parsed message through extraction and the detectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

from relayguard.config import ScanSettings
from relayguard.decision import Finding
from relayguard.detect.custom import CustomDetectors, CustomPattern, TermList
from relayguard.detect.finders import Match, builtin_hits
from relayguard.detect.parallel import Detection
from relayguard.detect.tally import Tally
from relayguard.extract import Budget, BudgetExceededError, Problem, TextUnit, extract, walk_message

__all__ = ["CustomDetectors", "CustomPattern", "TermList", "scan_message"]

PATTERN_TIMEOUT = 2.0  # seconds one custom pattern may spend on one text unit


@dataclass(slots=True)
class _CustomRunner:
    """Runs the admin's detectors; a pattern that times out is reported once and then dropped."""

    budget: Budget
    patterns: list[CustomPattern] = field(default_factory=list)
    terms: list[TermList] = field(default_factory=list)

    def run(self, unit: TextUnit, tally: Tally) -> list[Match]:
        found: list[Match] = []
        for terms in self.terms:
            found.extend(terms.finditer(unit.text))
        for pattern in list(self.patterns):
            timeout = max(0.01, min(PATTERN_TIMEOUT, self.budget.remaining()))
            try:
                found.extend(pattern.finditer(unit.text, timeout))
            except TimeoutError:
                tally.problem(Problem(unit.where, f"custom pattern {pattern.name} timed out"))
                self.patterns.remove(pattern)
        return found


def scan_message(msg: Message, *, limits: ScanSettings, custom: CustomDetectors | None = None,
                 salt: bytes = b"") -> list[Finding]:
    """Findings for ``msg`` (parsed once by the caller with the compat32 policy).

    Never raises for hostile content: what cannot be read within ``limits`` is an
    ``unscannable`` finding. Raw identifiers appear nowhere in the result.
    """
    budget = Budget.start(limits)
    tally = Tally(salt=salt)
    runner = _CustomRunner(budget, list(custom.patterns) if custom else [],
                           list(custom.terms) if custom else [])

    def merge(unit: TextUnit, delta: Tally | None) -> None:
        if delta is None:
            tally.add_hits(unit, builtin_hits(unit.text, unit.cells))
        else:
            tally.merge(delta)
        tally.add(unit, runner.run(unit, tally))

    detection = Detection(budget, merge, helper=limits.detect_helper)
    try:
        for item in walk_message(msg, where="", depth=0, budget=budget, dispatch=extract):
            if isinstance(item, Problem):
                tally.problem(item)
                continue
            budget.check_time()
            detection.add(item)
        detection.finish()
    except BudgetExceededError:
        tally.problem(Problem("message", "time budget exceeded"))
    finally:
        detection.close()
    return tally.findings()
