"""Extraction: any message part or attachment into text units, within the scan's limits."""

from relayguard.extract.base import (
    Budget,
    BudgetExceededError,
    Cells,
    Item,
    NeedsWorkerError,
    Problem,
    Source,
    TextUnit,
    UnscannableError,
    Work,
)
from relayguard.extract.dispatch import extract
from relayguard.extract.message import walk_message

__all__ = ["Budget", "BudgetExceededError", "Cells", "Item", "NeedsWorkerError", "Problem", "Source",
    "TextUnit", "UnscannableError", "Work", "extract", "walk_message"]
