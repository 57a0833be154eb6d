"""``scan_message``: every part of a parsed message through extraction and the detectors."""

from __future__ import annotations

from email.message import Message

from relayguard.config import ScanSettings
from relayguard.decision import Finding
from relayguard.detect.custom import CustomDetectors, CustomPattern, CustomRunner, TermList
from relayguard.detect.parallel import Detection
from relayguard.detect.tally import Tally
from relayguard.extract import Budget, BudgetExceededError, NeedsWorkerError, Problem, extract, walk_message

__all__ = ["CustomDetectors", "CustomPattern", "TermList", "scan_message"]

def scan_message(msg: Message, *, limits: ScanSettings, custom: CustomDetectors | None = None,
                 salt: bytes = b"", inline_slice: float | None = None) -> list[Finding]:
    """Findings for ``msg`` (parsed once by the caller with the compat32 policy).

    Never raises for hostile content: what cannot be read within ``limits`` is an
    ``unscannable`` finding. Raw identifiers appear nowhere in the result. With
    ``inline_slice`` the scan is an inline one (see :class:`Budget`) and raises
    :class:`NeedsWorkerError` for a message it must not finish in the event loop.
    """
    budget = Budget.start(limits, inline_slice=inline_slice)
    tally = Tally(salt=salt)
    runner = CustomRunner(budget, list(custom.patterns) if custom else [],
                          list(custom.terms) if custom else [])
    detection = Detection(budget, tally, runner, helper=limits.detect_helper)
    try:
        for item in walk_message(msg, where="", depth=0, budget=budget, dispatch=extract):
            if isinstance(item, Problem):
                tally.problem(item)
                continue
            budget.check_time()
            detection.add(item)
        detection.finish()
    except NeedsWorkerError:
        raise
    except BudgetExceededError:
        tally.problem(Problem("message", "time budget exceeded"))
    finally:
        detection.close()
    return tally.findings()
