"""Turning matches into findings: one per (kind, place, confident), counting distinct values.

Only the first value per group keeps its location and masked sample; every other value is kept
as its normalised form in a dict, so a spreadsheet with a million identifiers costs a set, not a
million location strings. Digests are computed once, at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from relayguard.decision import Finding
from relayguard.detect.checksum import ID_KINDS
from relayguard.detect.finders import Match
from relayguard.detect.masking import mask, mask_text
from relayguard.extract.base import Problem, TextUnit
from relayguard.extract.table import locate

SEVERAL = 3  # distinct valid identifiers of one kind in one place support each other
MAX_DIGESTS = 10_000  # per finding; the count stays exact beyond it
MAX_PROBLEMS = 50  # an archive bomb must not turn into a million findings


@dataclass(slots=True)
class _Group:
    values: dict[str, bool] = field(default_factory=dict)  # normalised value -> confident
    first: dict[bool, tuple[str, str]] = field(default_factory=dict)  # confident -> (where, sample)


@dataclass(slots=True)
class Tally:
    salt: bytes = b""
    _groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    _problems: dict[tuple[str, str], None] = field(default_factory=dict)

    def add(self, unit: TextUnit, matches: list[Match]) -> None:
        """Count ``matches`` found in ``unit``."""
        for m in matches:
            group = self._groups.get((m.kind, unit.where))
            if group is None:
                group = self._groups[(m.kind, unit.where)] = _Group()
            was = group.values.get(m.value)
            if was is None or (m.confident and not was):
                group.values[m.value] = m.confident
            if m.confident not in group.first:
                # Places include filenames, which can carry identifiers themselves.
                group.first[m.confident] = (mask_text(locate(unit, m.start)), mask(m.kind, m.value))

    def problem(self, item: Problem) -> None:
        if len(self._problems) < MAX_PROBLEMS:
            self._problems[(item.where, item.reason)] = None

    def findings(self) -> list[Finding]:
        """The findings so far, problems first, in the order places were met."""
        out = [Finding(kind="unscannable", where=w, reason=r) for w, r in self._problems]
        for (kind, _place), group in self._groups.items():
            several = kind in ID_KINDS and len(group.values) >= SEVERAL
            by_conf: dict[bool, list[str]] = {True: [], False: []}
            for value, confident in group.values.items():
                by_conf[confident or several].append(value)
            for confident in (True, False):
                values = by_conf[confident]
                if values:
                    where, sample = group.first.get(confident) or group.first[not confident]
                    out.append(Finding(kind=kind, where=where, count=len(values), confident=confident,
                                       sample=sample, digests=self._digests(values)))
        return out

    def _digests(self, values: list[str]) -> frozenset[str]:
        return frozenset(
            hashlib.blake2b(self.salt + v.encode(), digest_size=16).hexdigest()
            for v in values[:MAX_DIGESTS]
        )
