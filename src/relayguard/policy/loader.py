"""Load a policy file: YAML with node marks → checked :class:`Policy` → :class:`LoadedPolicy`.

Every problem is reported as ``FILE:LINE:COLUMN: path: reason`` so an admin can go straight to it.
The YAML is composed with ``yaml.SafeLoader`` (no tags that build objects) and then walked here,
which is where the file's shape is bounded: its size, its nesting and the number of nodes after
alias expansion (an alias "bomb" of a few hundred bytes would otherwise expand to gigabytes).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from relayguard.errors import PolicyError
from relayguard.message import normalise_domain
from relayguard.policy import model
from relayguard.policy.domains import (
    BUILTIN_LISTS,
    INTERNAL,
    PUBLIC_MAILBOX,
    SECURE,
    SHIPPED_PUBLIC_MAILBOX,
    SHIPPED_SECURE,
    DomainSet,
    DomainTable,
    domain_set,
)

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000  # after alias expansion; the default policy has a few hundred
MAX_DEPTH = 32
BUILTIN_KINDS = frozenset({"nhs_number", "chi_number", "hc_number", "date_of_birth", "postcode",
                           "unscannable", "address_defect", "header_defect"})

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a policy file, with its 1-based position."""

    source: str
    line: int
    column: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}: {self.reason}"


class PolicyFileError(PolicyError):
    """A policy file is invalid; ``issues`` has every problem found, in file order."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.line, i.column))
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True)
class LoadedPolicy:
    """A checked policy, ready for :func:`relayguard.policy.engine.decide` (and picklable)."""

    policy: model.Policy
    version: str  # sha256 hex of the file bytes
    source: str
    domains: DomainTable
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    custom: Any = None  # relayguard.detect.CustomDetectors, or None when the policy defines none

    @property
    def rules(self) -> list[model.Rule]:
        return self.policy.rules


# --- YAML with marks ------------------------------------------------------------------------


class _Marks:
    """Where each value (and each mapping key) of the document sits in the file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.values: dict[Path_, yaml.Mark] = {}
        self.keys: dict[Path_, yaml.Mark] = {}

    def issue(self, path: Path_, reason: str, *, at_key: bool = False) -> Issue:
        mark = self.keys.get(path) if at_key else None
        probe = path
        while mark is None and probe:
            mark = self.values.get(probe)
            probe = probe[:-1]
        mark = mark or self.values.get(())
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        where = dotted(path)
        return Issue(self.source, line, col, f"{where}: {reason}" if where else reason)


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


class _Builder:
    def __init__(self, marks: _Marks) -> None:
        self.marks = marks
        self.nodes = 0
        self.ctor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path_ = ()) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or len(path) > MAX_DEPTH:
            raise PolicyFileError([self._at(node, "document too large or too deeply nested "
                                                  "(alias expansion?)")])
        self.marks.values.setdefault(path, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.ctor.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise PolicyFileError([self._at(key_node, "a key must be plain text")])
            key = self.ctor.construct_object(key_node)
            if key in out:
                raise PolicyFileError([self._at(key_node, f"duplicate key {key!r}")])
            self.marks.keys[(*path, key)] = key_node.start_mark
            out[key] = self.build(value_node, (*path, key))
        return out

    def _at(self, node: yaml.Node, reason: str) -> Issue:
        m = node.start_mark
        return Issue(self.marks.source, m.line + 1, m.column + 1, reason)


def _compose(text: str, source: str) -> yaml.Node | None:
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = ": ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyFileError([Issue(source, line, col, f"YAML syntax: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError([Issue(source, 1, 1, f"YAML: {exc}")]) from None
    finally:
        loader.dispose()


# --- pydantic errors as admin-readable reasons ----------------------------------------------

_TYPE_WORDS = {
    "string_type": "expected text", "int_type": "expected a whole number",
    "bool_type": "expected true or false", "list_type": "expected a list",
    "dict_type": "expected a mapping of keys", "model_type": "expected a mapping of keys",
    "model_attributes_type": "expected a mapping of keys",
}


_SCHEMA: tuple[type[BaseModel], ...] = (
    model.Policy, model.DomainList, model.PatternDef, model.Rule, model.When, model.Then,
    model.RecipientCondition, model.FindingCondition, model.SubmitterCondition,
    model.AttachmentCondition, model.SizeCondition, model.HeaderCondition,
)
# Every key the schema knows, for "did you mean" hints on a typo.
_KNOWN_KEYS = sorted({info.alias or name for cls in _SCHEMA for name, info in cls.model_fields.items()})


def _reason(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        near = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
        return f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
    if kind == "missing":
        return f"missing required key {err['loc'][-1]!r}"
    if kind in _TYPE_WORDS:
        return f"{_TYPE_WORDS[kind]}, got {_describe(err['input'])}"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _validation_issues(exc: ValidationError, marks: _Marks) -> list[Issue]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "missing":
            out.append(marks.issue(loc[:-1], _reason(err)))
        else:
            out.append(marks.issue(loc, _reason(err), at_key=err["type"] == "extra_forbidden"))
    return out


# --- cross-references -----------------------------------------------------------------------


def _reference_issues(pol: model.Policy, marks: _Marks) -> Iterator[Issue]:
    lists = set(BUILTIN_LISTS) | set(pol.domains)
    kinds = BUILTIN_KINDS | {f"pattern:{n}" for n in pol.patterns} | {f"term:{n}" for n in pol.terms}
    seen: set[str] = set()
    for i, rule in enumerate(pol.rules):
        at: Path_ = ("rules", i)
        if rule.name in seen:
            yield marks.issue((*at, "name"), f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        yield from _recipient_refs(rule.when, (*at, "when"), lists, marks)
        if rule.when.findings:
            for j, kind in enumerate(rule.when.findings.kinds):
                if kind not in kinds:
                    yield marks.issue((*at, "when", "findings", "kinds", j),
                                      f"unknown finding kind {kind!r} (known: {', '.join(sorted(kinds))})")
        if rule.when.submitter:
            for j, group in enumerate(rule.when.submitter.groups):
                if group not in pol.groups:
                    yield marks.issue((*at, "when", "submitter", "groups", j), f"unknown group {group!r}")
    for name, dl in pol.domains.items():
        for j, dom in enumerate(dl.domains):
            if not normalise_domain(dom):
                yield marks.issue(("domains", name, "domains", j), f"not a domain name: {dom!r}")


def _recipient_refs(when: model.When, at: Path_, lists: set[str], marks: _Marks) -> Iterator[Issue]:
    for key in ("visible_recipients", "recipients"):
        cond = getattr(when, key)
        if cond is None:
            continue
        for field_name, names in (("in", cond.in_), ("outside", cond.outside)):
            for j, name in enumerate(names):
                if name not in lists:
                    yield marks.issue((*at, key, field_name, j),
                                      f"unknown domain list {name!r} (known: {', '.join(sorted(lists))})")


# --- the loaded form ------------------------------------------------------------------------


def _domain_table(pol: model.Policy) -> DomainTable:
    shipped = {SECURE: SHIPPED_SECURE, PUBLIC_MAILBOX: SHIPPED_PUBLIC_MAILBOX, INTERNAL: ()}
    lists: dict[str, DomainSet] = {}
    for name in {*BUILTIN_LISTS, *pol.domains}:
        dl = pol.domains.get(name, model.DomainList())
        base = () if dl.replace_shipped else shipped.get(name, ())
        lists[name] = domain_set([*base, *dl.domains], subdomains=dl.subdomains)
    return DomainTable(lists)


def parse_policy(data: bytes, source: str) -> LoadedPolicy:
    """Check ``data`` (the bytes of a policy file named ``source``); raise :class:`PolicyFileError`."""
    if len(data) > MAX_FILE_BYTES:
        raise PolicyFileError([Issue(source, 1, 1, f"file larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError([Issue(source, 1, 1, f"not UTF-8 text ({exc.reason})")]) from None
    marks = _Marks(source)
    node = _compose(text, source)
    doc = _Builder(marks).build(node) if node is not None else {}
    if not isinstance(doc, dict):
        raise PolicyFileError([marks.issue((), "a policy is a mapping with at least a 'rules' key")])
    try:
        pol = model.Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyFileError(_validation_issues(exc, marks)) from None
    issues = list(_reference_issues(pol, marks))
    if issues:
        raise PolicyFileError(issues)
    groups = {g: frozenset(n.lower() for n in names) for g, names in pol.groups.items()}
    try:
        custom = _custom_detectors(pol)
    except ValueError as exc:  # the detectors' own checks, should they be stricter than ours
        raise PolicyFileError([marks.issue(("patterns",), str(exc))]) from None
    return LoadedPolicy(pol, hashlib.sha256(data).hexdigest(), source, _domain_table(pol), groups, custom)


def _custom_detectors(pol: model.Policy) -> Any:
    if not pol.patterns and not pol.terms:
        return None
    from relayguard.detect import CustomDetectors, CustomPattern, TermList  # noqa: PLC0415 - only when used

    return CustomDetectors(
        patterns=tuple(CustomPattern(n, p.regex, confident=p.confident) for n, p in pol.patterns.items()),
        terms=tuple(TermList(name, terms) for name, terms in pol.terms.items()),
    )


def load_policy(path: Path) -> LoadedPolicy:
    """The policy in ``path``; :class:`PolicyFileError` names file, line and column of each problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyFileError([Issue(str(path), 1, 1, f"cannot read: {exc.strerror or exc}")]) from None
    return parse_policy(data, str(path))
