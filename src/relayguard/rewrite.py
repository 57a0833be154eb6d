"""Hide recipients from each other before delivery: ``bcc`` and ``individual`` rewrites.

The rewrite works on the raw header block (see :func:`relayguard.message.split_header_block`):
whole fields are dropped or added, nothing else is re-serialised. Round-tripping through
``email.message`` and ``as_bytes()`` is exactly what must not happen here: a decoded subject such
as ``=?utf-8?q?x=0D=0ABcc:_victim@example.com?=`` can come back out as a real ``Bcc:`` line
(CVE-2024-6923). Every generated header block is parsed again and checked before it is returned.

The body is passed through byte for byte, and the envelope decides who receives a copy: the
rewrite never adds a recipient who was not in the envelope.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from relayguard.decision import Decision, Envelope, Rewrite
from relayguard.errors import RelayguardError
from relayguard.message import (
    VISIBLE_HEADERS,
    HeaderBlock,
    HeaderField,
    field_defect,
    header_end,
    make_recipient,
    parse_address_list,
    split_header_block,
)

TRACE_HEADER = "X-Relayguard-Rewrite"
UNDISCLOSED = "undisclosed-recipients:;"
_OURS = frozenset({"to", "subject", TRACE_HEADER.lower()})
_BLIND = frozenset({"bcc", "resent-bcc"})
# The start of a field named in _BLIND, as split_header_block reads names (white space before the
# colon included): found without splitting the block, which most messages need no more.
_BLIND_FIELD = re.compile(rb"(?im)^(?:resent-)?bcc[ \t]*:")
_RULE = re.compile(r"[A-Za-z0-9_.-]+")
_TAG = re.compile(r"[\x20-\x7e]{1,40}")
_SAFE_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]\\]+@[^\s<>,;:\"()\[\]\\@]+")


class RewriteError(RelayguardError):
    """A rewrite produced (or would produce) a header block that fails verification."""


Copy = tuple[Envelope, bytes]


def apply(raw: bytes, decision: Decision, envelope: Envelope) -> list[Copy]:
    """The copies to send for ``decision``: one for deliver/bcc, one per visible recipient for
    ``individual`` (plus one bcc-style copy for envelope-only recipients). ``Bcc`` and
    ``Resent-Bcc`` fields are removed from every copy, whatever the decision.

    The action is not consulted: a held message that is later approved is rewritten the same way.
    Raises :class:`RewriteError` rather than return a copy that fails verification.
    """
    if decision.rewrite is None and not decision.tag_subject \
            and not _BLIND_FIELD.search(raw, 0, header_end(raw)):
        return [(envelope, raw)]
    block = split_header_block(raw)
    # A Bcc field a client left in would show every blind recipient to everyone: never forwarded.
    kept = [f for f in block.fields if f.lname not in _BLIND]
    fields = tag_subject(kept, decision.tag_subject, block.newline)
    trace = _trace_value(decision)
    if decision.rewrite is Rewrite.INDIVIDUAL:
        plan = _individual_plan(block, envelope)
    elif decision.rewrite is Rewrite.BCC:
        plan = [(envelope, None)]
    else:
        plan = []
    if not plan:  # tags only: keep every other field as it is
        return [(envelope, _checked(fields, block, recipient=None, hidden=False))]
    return [(env, _checked(_hide(fields, block.newline, trace, to), block, recipient=to, hidden=True))
            for env, to in plan]


def _trace_value(decision: Decision) -> str:
    rules = ",".join(r for r in decision.rules if _RULE.fullmatch(r))
    kind = decision.rewrite.value if decision.rewrite else "tag"
    return f"{kind}; rule={rules}" if rules else kind


def _line(name: str, value: str, newline: bytes) -> HeaderField:
    # UTF-8 only ever comes from an SMTPUTF8 envelope address; everything else we write is ASCII.
    return HeaderField(name, f"{name}: {value}".encode() + newline)


def _hide(fields: Sequence[HeaderField], newline: bytes, trace: str, to: str | None) -> list[HeaderField]:
    """Fields without any recipient list, with a single ``To`` (``to`` or undisclosed) instead."""
    out = [_line(TRACE_HEADER, trace, newline)]
    to_field: HeaderField | None = _line("To", f"<{to}>" if to else UNDISCLOSED, newline)
    for f in fields:
        if f.lname in VISIBLE_HEADERS or f.lname == TRACE_HEADER.lower():
            if to_field is not None:  # where the first recipient list was, so the order looks natural
                out.append(to_field)
                to_field = None
            continue
        if field_defect(f):
            continue  # junk or a bare CR: an upstream could read it as a header we did not see
        out.append(f)
    if to_field is not None:
        out.append(to_field)
    return out


def _individual_plan(block: HeaderBlock, envelope: Envelope) -> list[tuple[Envelope, str | None]]:
    """(envelope, To address) per visible recipient, then one undisclosed copy for the rest."""
    visible: set[str] = set()
    for f in block.fields:
        if f.lname in VISIBLE_HEADERS:
            visible.update(make_recipient(a).address for a in parse_address_list(f.value)[0])
    plan: list[tuple[Envelope, str | None]] = []
    rest: list[str] = []
    for rcpt in dict.fromkeys(envelope.rcpt_tos):
        if make_recipient(rcpt).address in visible and _SAFE_ADDRESS.fullmatch(rcpt):
            plan.append((Envelope(envelope.mail_from, (rcpt,)), rcpt))
        else:
            rest.append(rcpt)
    if rest:
        plan.append((Envelope(envelope.mail_from, tuple(rest)), None))
    return plan


def tag_subject(fields: list[HeaderField], tags: Iterable[str], newline: bytes) -> list[HeaderField]:
    """Prefix each tag (``[secure]``) to every Subject field once; add a Subject if there is none."""
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise RewriteError("a subject tag must be printable ASCII, 1-40 characters")
        subjects = [i for i, f in enumerate(fields) if f.lname == "subject"]
        if not subjects:
            fields.append(_line("Subject", tag, newline))
        for i in subjects:
            fields[i] = _prefixed(fields[i], tag, newline)
    return fields


def _prefixed(f: HeaderField, tag: str, newline: bytes) -> HeaderField:
    if f.value.lower().startswith(tag.lower()):
        return f
    name, rest = f.raw.split(b":", 1)
    rest = rest.lstrip(b" \t")
    if not rest.strip():
        rest = newline
    return HeaderField(f.name, name + b": " + tag.encode("ascii") + b" " + rest, f.obsolete)


def _assemble(fields: Sequence[HeaderField], body: bytes, newline: bytes) -> bytes:
    parts = [f.raw if f.raw.endswith(b"\n") else f.raw + newline for f in fields]
    return b"".join(parts) + body


def _checked(fields: Sequence[HeaderField], block: HeaderBlock, *, recipient: str | None,
             hidden: bool) -> bytes:
    out = _assemble(fields, block.body, block.newline)
    verify(out, block, recipient=recipient, hidden=hidden, expected_fields=len(fields))
    return out


def verify(out: bytes, original: HeaderBlock, *, recipient: str | None, hidden: bool,
           expected_fields: int) -> None:
    """Raise :class:`RewriteError` unless ``out`` is exactly the header block we meant to write.

    Parsing the output again catches anything that would read differently downstream: a value that
    became two lines, a field name we did not have before, a recipient list that survived.
    """
    again = split_header_block(out)
    if len(again.fields) != expected_fields or again.body != original.body:
        raise RewriteError("rewritten header block does not parse back to the fields written")
    before = {f.lname for f in original.fields}
    for f in again.fields:
        if not f.name or f.lname not in before | _OURS:
            raise RewriteError(f"rewrite would add a header field {f.name!r}")
        if hidden and field_defect(f):
            raise RewriteError("rewritten header field contains a bare CR, LF or NUL")
    if hidden:
        _verify_recipients(again, recipient)


def _verify_recipients(block: HeaderBlock, recipient: str | None) -> None:
    lists = [f for f in block.fields if f.lname in VISIBLE_HEADERS]
    if len(lists) != 1 or lists[0].lname != "to":
        raise RewriteError("rewritten message must carry exactly one To field and no other list")
    addresses = parse_address_list(lists[0].value)[0]
    want = [recipient] if recipient else []
    if [make_recipient(a).address for a in addresses] != [make_recipient(a).address for a in want]:
        raise RewriteError("rewritten To field does not name only the copy's own recipient")
