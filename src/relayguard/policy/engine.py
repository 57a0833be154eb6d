"""The policy engine: message bytes + envelope + submitter + policy → :class:`Decision`.

:func:`decide` is pure (no I/O, no clock, no globals written) and takes only picklable arguments,
so the relay may run it in a process pool; ``relayguard policy explain`` calls the same function.
Combination of matched rules: the strictest action wins (reject > hold > deliver), ``individual``
beats ``bcc``, subject tags and notify addresses accumulate, approvals take the maximum, and every
matched rule is named in :attr:`Decision.rules` in policy order.
"""

from __future__ import annotations

import email.message
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Protocol

from relayguard.config import ScanSettings
from relayguard.decision import Action, Decision, Envelope, Finding, Rewrite, Submitter, SubmitterKind
from relayguard.message import (
    UNSCANNABLE,
    ParsedMessage,
    Recipient,
    decode_words,
    envelope_recipients,
    make_recipient,
    parse_message,
)
from relayguard.policy import model
from relayguard.policy.domains import DomainTable
from relayguard.policy.loader import LoadedPolicy


class Detector(Protocol):
    """The detector seam: ``relayguard.detect.scan_message`` has this shape."""

    def __call__(self, msg: email.message.Message, *, limits: ScanSettings, custom: Any = None,
                 salt: bytes = b"", inline_slice: float | None = None) -> list[Finding]: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What the rules look at for one message."""

    parsed: ParsedMessage
    visible: tuple[Recipient, ...]  # distinct; malformed entries each count
    everyone: tuple[Recipient, ...]  # envelope recipients and visible ones, distinct
    domains: DomainTable  # with the sender's own domain in "internal"
    findings: tuple[Finding, ...]
    submitter: Submitter


def decide(raw: bytes, envelope: Envelope, submitter: Submitter, policy: LoadedPolicy, *,
           limits: ScanSettings, detector: Detector | None = None,
           inline_slice: float | None = None) -> Decision:
    """Decide what happens to ``raw``. Never raises for a malformed message: it fails safe.

    ``inline_slice``: the caller is the relay's event loop and gives the scan that many seconds;
    a message that needs more, or holds a document or archive, raises
    :class:`relayguard.extract.NeedsWorkerError` (decide it again in a worker)."""
    parsed = parse_message(raw, limits)
    # Not needed from here: a scan worker's only reference to a large message's bytes (see
    # scanpool.decide_timed) goes before the scan makes its own copies, ~25 MiB of its peak.
    del raw
    findings = (*parsed.defects, *_detect(parsed, policy, limits, detector, inline_slice))
    return evaluate(build_context(parsed, envelope, submitter, policy, findings), policy)


def _detect(parsed: ParsedMessage, policy: LoadedPolicy, limits: ScanSettings,
            detector: Detector | None, inline_slice: float | None) -> list[Finding]:
    if parsed.msg is None:
        return []  # already an unscannable finding from the parser
    # Imported here: keeps message/policy importable alone.
    from relayguard.extract.base import NeedsWorkerError  # noqa: PLC0415

    if detector is None:
        from relayguard.detect import scan_message  # noqa: PLC0415

        detector = scan_message
    try:
        return list(detector(parsed.msg, limits=limits, custom=policy.custom, inline_slice=inline_slice))
    except NeedsWorkerError:
        raise  # not a finding: the relay decides this message in a worker instead
    except Exception as exc:  # noqa: BLE001 - a detector crash must hold the message, not pass it
        return [Finding(kind=UNSCANNABLE, where="message", reason=f"detector failed ({type(exc).__name__})")]


def sender_domains(envelope: Envelope, submitter: Submitter) -> list[str]:
    """The sending organisation's domains: the authenticated user's and the envelope sender's."""
    out = []
    if submitter.kind is SubmitterKind.USER and "@" in submitter.name:
        out.append(make_recipient(submitter.name).domain)
    if envelope.mail_from:
        out.append(make_recipient(envelope.mail_from).domain)
    return [d for d in out if d]


def _distinct(recipients: Iterable[Recipient]) -> tuple[Recipient, ...]:
    seen: set[str] = set()
    out = []
    for r in recipients:
        if r.malformed or r.address not in seen:
            out.append(r)
            seen.add(r.address)
    return tuple(out)


def build_context(parsed: ParsedMessage, envelope: Envelope, submitter: Submitter,
                  policy: LoadedPolicy, findings: Sequence[Finding]) -> Context:
    visible = _distinct(parsed.visible)
    # Everyone who gets it or is named as getting it: a visible address missing from the envelope
    # still matters, since a recipient may reply-all to it.
    everyone = _distinct((*envelope_recipients(envelope), *visible))
    domains = policy.domains
    if policy.policy.internal_from_sender:
        domains = domains.for_sender(sender_domains(envelope, submitter))
    return Context(parsed, visible, everyone, domains, tuple(findings), submitter)


# --- conditions -----------------------------------------------------------------------------


def _recipients_match(cond: model.RecipientCondition, recipients: Sequence[Recipient],
                      domains: DomainTable) -> bool:
    n = 0
    for r in recipients:
        if cond.in_ and not any(domains.contains(name, r.domain) for name in cond.in_):
            continue
        if any(domains.contains(name, r.domain) for name in cond.outside):
            continue
        n += 1
        if n >= cond.min:
            return True
    return False


def distinct_count(findings: Iterable[Finding]) -> int:
    """Distinct identifiers across places: digests unite repeats; without digests, counts add."""
    digests: set[str] = set()
    plain = 0
    for f in findings:
        if f.digests:
            digests |= f.digests
        else:
            plain += f.count
    return len(digests) + plain


def _findings_match(cond: model.FindingCondition, findings: Sequence[Finding]) -> bool:
    hits = [f for f in findings
            if f.kind in cond.kinds and (f.confident or not cond.confident)
            and (cond.where is None or fnmatchcase(f.where, cond.where))]
    return bool(hits) and distinct_count(hits) >= cond.min_distinct


def _submitter_match(cond: model.SubmitterCondition, submitter: Submitter, policy: LoadedPolicy) -> bool:
    name = submitter.name.lower()
    if name in (n.lower() for n in cond.names):
        return True
    return any(name in policy.groups.get(g, frozenset()) for g in cond.groups)


@lru_cache(maxsize=256)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def _network_match(cidrs: list[str], client_addr: str) -> bool:
    try:
        addr = ipaddress.ip_address(client_addr.strip("[]"))
    except ValueError:
        return False
    return any(addr in _network(c) for c in cidrs)


def _attachment_match(cond: model.AttachmentCondition, parsed: ParsedMessage) -> bool:
    for att in parsed.attachments:
        if any(fnmatchcase(att.content_type, t.lower()) for t in cond.types):
            return True
        if any(fnmatchcase(att.filename.lower(), n.lower()) for n in cond.names):
            return True
    return False


def _size_match(cond: model.SizeCondition, size: int) -> bool:
    return (cond.min is None or size >= cond.min) and (cond.max is None or size <= cond.max)


def _headers_match(conds: list[model.HeaderCondition], parsed: ParsedMessage) -> bool:
    for cond in conds:
        values = (decode_words(f.value) for f in parsed.headers.get_all(cond.name.lower()))
        if not any(cond.search(v) for v in values):
            return False
    return True


def _conditions(when: model.When, ctx: Context, policy: LoadedPolicy) -> Iterator[bool]:
    # A generator so that all() stops at the first failing condition; cheap checks come first.
    if when.submitter is not None:
        yield _submitter_match(when.submitter, ctx.submitter, policy)
    if when.source_network is not None:
        yield _network_match(when.source_network, ctx.submitter.client_addr)
    if when.size is not None:
        yield _size_match(when.size, ctx.parsed.size)
    if when.visible_recipients is not None:
        yield _recipients_match(when.visible_recipients, ctx.visible, ctx.domains)
    if when.recipients is not None:
        yield _recipients_match(when.recipients, ctx.everyone, ctx.domains)
    if when.findings is not None:
        yield _findings_match(when.findings, ctx.findings)
    if when.attachment is not None:
        yield _attachment_match(when.attachment, ctx.parsed)
    if when.headers is not None:
        yield _headers_match(when.headers, ctx.parsed)


def rule_matches(when: model.When, ctx: Context, policy: LoadedPolicy) -> bool:
    """All conditions of ``when`` hold for ``ctx`` (an empty ``when`` always holds)."""
    return all(_conditions(when, ctx, policy))


# --- combination ----------------------------------------------------------------------------


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def combine(matched: Sequence[model.Rule], findings: Sequence[Finding], version: str) -> Decision:
    """The decision of the matched rules (see the module docstring for the combination)."""
    thens = [r.then for r in matched]
    action = max((Action(t.action) for t in thens), key=lambda a: a.strictness, default=Action.DELIVER)
    rewrites = {t.rewrite for t in thens}
    rewrite = (Rewrite.INDIVIDUAL if "individual" in rewrites
               else Rewrite.BCC if "bcc" in rewrites else None)
    return Decision(
        action=action,
        rewrite=rewrite,
        rules=tuple(r.name for r in matched),
        findings=tuple(findings),
        reply=next((t.reply for t in thens if t.action == "reject" and t.reply), None),
        tag_subject=_unique(t.tag_subject for t in thens if t.tag_subject),
        notify=_unique(a for t in thens for a in t.notify),
        approvals_required=max((t.approvals for t in thens), default=1),
        approver_role="admin" if any(t.approver_role == "admin" for t in thens) else "reviewer",
        policy_version=version,
    )


def evaluate(ctx: Context, policy: LoadedPolicy) -> Decision:
    """Run every rule of ``policy`` over ``ctx``; the pure core that :func:`decide` wraps."""
    matched = [r for r in policy.rules if rule_matches(r.when, ctx, policy)]
    return combine(matched, ctx.findings, policy.version)
