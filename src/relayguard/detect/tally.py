"""Turning matches into findings: one per (kind, place, confident), counting distinct values.

Only the first value per group keeps its location and masked sample; every other value is kept
as its normalised form in a dict (identifiers as ints, a third of the memory of their text), so a
spreadsheet with a million identifiers costs a dict of ints, not a million location strings.
Digests are computed once, at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from relayguard.decision import Finding
from relayguard.detect.checksum import ID_KINDS
from relayguard.detect.finders import Hit, Key, Match, value_text
from relayguard.detect.masking import mask, mask_text
from relayguard.extract.base import Problem, TextUnit
from relayguard.extract.table import locate

SEVERAL = 3  # distinct valid identifiers of one kind in one place support each other
MAX_DIGESTS = 10_000  # per finding; the count stays exact beyond it
MAX_PROBLEMS = 50  # an archive bomb must not turn into a million findings


@dataclass(slots=True)
class _Group:
    values: dict[Key, bool] = field(default_factory=dict)  # normalised value -> confident
    first: dict[bool, tuple[str, str]] = field(default_factory=dict)  # confident -> (where, sample)


@dataclass(slots=True)
class Tally:
    salt: bytes = b""
    _groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    _problems: dict[tuple[str, str], None] = field(default_factory=dict)

    def add(self, unit: TextUnit, matches: list[Match]) -> None:
        """Count ``matches`` found in ``unit``."""
        self.add_hits(unit, [(m.kind, m.start, m.end, m.value, m.confident) for m in matches])

    def add_hits(self, unit: TextUnit, hits: list[Hit]) -> None:
        """Count ``hits`` found in ``unit``, in order (the first of each group gives its place)."""
        kind = ""
        group = _Group()
        for hit_kind, start, _end, key, confident in hits:
            if hit_kind != kind:  # hits come in runs of one kind: look the group up once per run
                kind = hit_kind
                group = self._group(kind, unit.where)
            if confident:
                group.values[key] = True  # new, or weak until now (its place in the order stays)
            else:
                group.values.setdefault(key, False)
            if confident not in group.first:
                # Places include filenames, which can carry identifiers themselves.
                group.first[confident] = (mask_text(locate(unit, start)), mask(kind, value_text(key)))

    def merge(self, other: Tally) -> None:
        """Add ``other``'s groups (hits tallied after this tally's): the same as adding its hits
        here in their order. A value keeps its first place and is confident if it was in either;
        a group keeps its first places; new groups come after the ones here, in their order;
        so do its problems."""
        for problem in other._problems:
            if len(self._problems) < MAX_PROBLEMS:
                self._problems[problem] = None
        for key, theirs in other._groups.items():
            ours = self._groups.get(key)
            if ours is None:
                self._groups[key] = theirs
                continue
            values = ours.values
            if False not in theirs.values.values():
                values.update(theirs.values)  # all confident: one C-level update, same order
            else:
                for value, confident in theirs.values.items():
                    if confident:
                        values[value] = True
                    else:
                        values.setdefault(value, False)
            for confident, place in theirs.first.items():
                ours.first.setdefault(confident, place)

    def _group(self, kind: str, where: str) -> _Group:
        group = self._groups.get((kind, where))
        if group is None:
            group = self._groups[(kind, where)] = _Group()
        return group

    def problem(self, item: Problem) -> None:
        if len(self._problems) < MAX_PROBLEMS:
            self._problems[(item.where, item.reason)] = None

    def findings(self) -> list[Finding]:
        """The findings so far, problems first, in the order places were met."""
        out = [Finding(kind="unscannable", where=w, reason=r) for w, r in self._problems]
        for (kind, _place), group in self._groups.items():
            several = kind in ID_KINDS and len(group.values) >= SEVERAL
            by_conf: dict[bool, list[Key]] = {True: [], False: []}
            for value, confident in group.values.items():
                by_conf[confident or several].append(value)
            for confident in (True, False):
                values = by_conf[confident]
                if values:
                    where, sample = group.first.get(confident) or group.first[not confident]
                    out.append(Finding(kind=kind, where=where, count=len(values), confident=confident,
                                       sample=sample, digests=self._digests(values)))
        return out

    def _digests(self, values: list[Key]) -> frozenset[str]:
        return frozenset(
            hashlib.blake2b(self.salt + value_text(v).encode(), digest_size=16).hexdigest()
            for v in values[:MAX_DIGESTS]
        )
