"""Admin-defined detectors: regular expressions and clinical term lists, built from the policy.

Patterns are compiled with the ``regex`` package because it can stop a match after a timeout: a
catastrophic pattern written by an admin must not stall the relay, so a timeout becomes an
``unscannable`` finding instead of a hang.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import regex

from relayguard.detect.finders import Match
from relayguard.extract.base import Budget, Problem, TextUnit

if TYPE_CHECKING:
    from relayguard.detect.tally import Tally

PATTERN_TIMEOUT = 2.0  # seconds one custom pattern may spend on one text unit
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_name(what: str, name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"{what} name {name!r} must be letters, digits, '_', '.' or '-'")


@dataclass(frozen=True, slots=True)
class CustomPattern:
    """A named regular expression; matches become ``pattern:<name>`` findings."""

    name: str
    pattern: str
    confident: bool = True
    compiled: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("custom pattern", self.name)
        try:
            compiled = regex.compile(self.pattern, regex.V0)
        except regex.error as exc:
            raise ValueError(f"custom pattern {self.name!r}: invalid regular expression: {exc}") from exc
        if compiled.fullmatch(""):
            raise ValueError(f"custom pattern {self.name!r}: matches the empty string")
        object.__setattr__(self, "compiled", compiled)

    @property
    def kind(self) -> str:
        return f"pattern:{self.name}"

    def finditer(self, text: str, timeout: float) -> Iterator[Match]:
        """Matches in ``text``; raises ``TimeoutError`` when matching takes over ``timeout`` s."""
        for m in self.compiled.finditer(text, timeout=timeout):
            if m.end() > m.start():
                yield Match(self.kind, m.group(), m.start(), m.end(), self.confident)


@dataclass(frozen=True, slots=True)
class TermList:
    """Named clinical terms matched case-insensitively as whole words (``term:<name>``)."""

    name: str
    terms: tuple[str, ...]
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __init__(self, name: str, terms: Iterable[str]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "terms", tuple(terms))
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_name("term list", self.name)
        words = sorted({t.strip() for t in self.terms if t.strip()}, key=len, reverse=True)
        if not words:
            raise ValueError(f"term list {self.name!r} has no terms")
        # Longest first so "heart failure" wins over "heart"; any run of spaces matches a space.
        body = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
        object.__setattr__(self, "compiled", re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.I))

    @property
    def kind(self) -> str:
        return f"term:{self.name}"

    def finditer(self, text: str) -> Iterator[Match]:
        for m in self.compiled.finditer(text):
            yield Match(self.kind, " ".join(m.group().lower().split()), m.start(), m.end())


@dataclass(frozen=True, slots=True)
class CustomDetectors:
    """The admin's patterns and term lists, as the policy engine hands them to ``scan_message``."""

    patterns: tuple[CustomPattern, ...] = ()
    terms: tuple[TermList, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists from callers (YAML loaders) but keep the object hashable and immutable.
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "terms", tuple(self.terms))
        names = [p.kind for p in self.patterns] + [t.kind for t in self.terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"custom detectors defined twice: {', '.join(dupes)}")


@dataclass(slots=True)
class CustomRunner:
    """Runs the admin's detectors; a pattern that times out is reported once and then dropped."""

    budget: Budget
    patterns: list[CustomPattern] = field(default_factory=list)
    terms: list[TermList] = field(default_factory=list)

    def run(self, unit: TextUnit, tally: Tally) -> list[Match]:
        """Matches in ``unit``; a pattern that times out is reported to ``tally`` and dropped."""
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
