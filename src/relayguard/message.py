"""The parsed view of one message: its header fields, recipients, attachments and defects.

Two parsers, on purpose:

- The header block is split and tokenised here, at the bytes level (:func:`split_header_block`).
  Recipients are read from these fields and ``rewrite`` edits the very same fields, so what the
  policy counts and what the rewriter removes can never disagree. The stdlib parser, for instance,
  ends the header block at the obsolete ``CC : x@y`` form and would miss those recipients.
- The MIME tree for the detectors is parsed once with ``email.policy.compat32``: the modern policy
  costs ~30x more per message and its lazy header objects are not needed by the detectors.

Nothing here raises on hostile input: parser failures become ``unscannable`` findings, bad address
headers become ``address_defect`` findings (and count as external recipients), junk in the header
block becomes a ``header_defect`` finding. The policy decides what those mean (the default holds).
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import re
from dataclasses import dataclass
from email import _header_value_parser as hvp
from email.header import decode_header, make_header

from relayguard.config import ScanSettings
from relayguard.decision import Envelope, Finding
from relayguard.mimesplit import split_message

# Headers whose addresses every recipient of the message as it stands can read. Bcc is included:
# an SMTP relay does not strip a Bcc header a client left in, so its addresses are visible too.
VISIBLE_HEADERS = frozenset({"to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc", "apparently-to",
                             "mail-followup-to"})

ADDRESS_DEFECT = "address_defect"
HEADER_DEFECT = "header_defect"
UNSCANNABLE = "unscannable"

_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)([ \t]*):")
_FOLD = re.compile(r"\r?\n(?=[ \t])")

# The common shapes (``a@b``, ``Name <a@b>``) parse with one regex; anything with quotes, comments,
# groups or routes goes to the stdlib's full RFC 5322 parser (~50 µs per address, too slow for a
# 500-address To line on the fast path, but exact).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_DOMAIN = r"[^\s<>@,;:\"()\[\]\\]+"
_SIMPLE_ITEM = re.compile(
    rf"\s*(?:[^<>@,;:\"()\[\]\\]*<\s*({_ATEXT}@{_DOMAIN})\s*>|({_ATEXT}@{_DOMAIN}))\s*"
)
_HARD_CHARS = re.compile(r"[\"():;\\\[\]]")
_MAX_SLOW_VALUE = 64 * 1024  # the full parser is super-linear on some inputs; beyond this: defect
_DOMAIN_OK = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field exactly as received: ``raw`` holds its lines, folding and line ends.

    ``name`` is empty for a line that is neither a field nor a continuation (junk in the block).
    """

    name: str
    raw: bytes
    obsolete: bool = False  # white space between name and colon (RFC 5322 obs-optional)

    @property
    def lname(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> str:
        """The unfolded value; undecodable bytes become U+FFFD, which no address can contain."""
        if not self.name:
            return ""
        text = self.raw.decode("utf-8", errors="replace")
        text = _FOLD.sub("", text.split(":", 1)[1])
        return text.strip()


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    fields: tuple[HeaderField, ...]
    raw: bytes  # the whole message; the body is sliced off it only when asked for
    body_at: int  # where the body starts: at the blank line (included); len(raw) when none
    newline: bytes  # the line ending the message uses, for lines we add

    @property
    def body(self) -> bytes:
        """From the blank line on; a copy, made only for the rewriter (a 25 MB message's body
        held for every parse would be 25 MB more in each process that reads it)."""
        return self.raw[self.body_at:]

    def without_body(self) -> HeaderBlock:
        """The same fields, keeping the header bytes only: what a parsed message keeps, so that
        a scan worker need not hold the whole message while it scans (its ``body`` is empty)."""
        return HeaderBlock(self.fields, self.raw[:self.body_at], self.body_at, self.newline)

    def get_all(self, lname: str) -> list[HeaderField]:
        return [f for f in self.fields if f.lname == lname]

    def first(self, lname: str) -> str:
        for f in self.fields:
            if f.lname == lname:
                return f.value
        return ""


def header_end(raw: bytes) -> int:
    """Where the body of ``raw`` starts: at its first empty line (CRLF or LF alone, at the start
    or after an LF); len(raw) when it has none.

    Two ``find`` calls, a fifteenth of a regex search's time (it runs several times for each
    message): the first LF followed by CRLF, and an earlier LF followed by LF, looked for only
    before it (a CRLF message has none, and would be read to its end)."""
    if raw.startswith((b"\n", b"\r\n")):
        return 0
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(raw))
    if lf >= 0:
        return lf + 1
    return crlf + 1 if crlf >= 0 else len(raw)


def split_header_block(raw: bytes) -> HeaderBlock:
    """The header fields of ``raw`` up to the first empty line, and the rest untouched."""
    body_at = header_end(raw)
    head = raw[:body_at]
    newline = b"\r\n" if b"\r\n" in head or raw.startswith(b"\r\n", body_at) else b"\n"
    fields: list[HeaderField] = []
    for line in _LINE.findall(head):
        if line[:1] in (b" ", b"\t") and fields and fields[-1].name:
            fields[-1] = HeaderField(fields[-1].name, fields[-1].raw + line, fields[-1].obsolete)
            continue
        fm = _FIELD_NAME.match(line)
        if fm:
            fields.append(HeaderField(fm.group(1).decode("ascii"), line, bool(fm.group(2))))
        else:
            fields.append(HeaderField("", line))
    return HeaderBlock(tuple(fields), raw, body_at, newline)


def field_defect(f: HeaderField) -> str | None:
    """Why a field is unsafe to pass on as it is, or None: junk lines, bare CR, NUL."""
    if not f.name:
        return "a line in the header block is not a header field"
    inner = f.raw.rstrip(b"\r\n")
    if b"\r" in inner.replace(b"\r\n", b"") or b"\x00" in inner:
        return "bare CR or NUL inside a header field"
    return None


@dataclass(frozen=True, slots=True)
class Recipient:
    """A recipient address, normalised for comparison; ``domain`` is empty when malformed."""

    address: str  # local@domain, lower-case, domain in IDNA ASCII form
    domain: str
    header: str = ""  # where it was seen ("To", "Cc"…), "" for the envelope

    @property
    def malformed(self) -> bool:
        return not self.domain


def normalise_domain(domain: str) -> str:
    """Lower-case ASCII (IDNA) form of ``domain``, or "" when it is not a usable domain name."""
    d = domain.strip().rstrip(".").lower()
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return ""
    return d if _DOMAIN_OK.fullmatch(d) else ""


def make_recipient(addr_spec: str, header: str = "") -> Recipient:
    """``addr_spec`` as a :class:`Recipient`; a missing or bad domain makes it malformed."""
    local, at, domain = addr_spec.strip().rpartition("@")
    norm = normalise_domain(domain) if at and local else ""
    if not norm:
        return Recipient(addr_spec.strip().lower(), "", header)
    return Recipient(f"{local.lower()}@{norm}", norm, header)


def _simple_addresses(value: str) -> list[str] | None:
    """Addresses of a list in the common simple form, or None to use the full parser."""
    if _HARD_CHARS.search(value):
        return None
    out = []
    for item in value.split(","):
        m = _SIMPLE_ITEM.fullmatch(item)
        if not m:
            return None
        out.append(m.group(1) or m.group(2))
    return out


def parse_address_list(value: str) -> tuple[list[str], int]:
    """(addr-specs, number of malformed entries) of one address header value.

    Group syntax (``undisclosed-recipients:;``) yields its members, possibly none.
    """
    if not value.strip():
        return [], 0
    simple = _simple_addresses(value)
    if simple is not None:
        return simple, 0
    if len(value) > _MAX_SLOW_VALUE:
        return [], 1
    try:
        parsed, rest = hvp.get_address_list(value)
    except Exception:  # noqa: BLE001 - the stdlib parser raises assorted errors on garbage
        return [], 1
    good: list[str] = []
    bad = 1 if rest.strip() else 0
    for mbox in parsed.all_mailboxes:
        if mbox.token_type == "invalid-mailbox" or not mbox.addr_spec:  # noqa: S105 - not a secret
            bad += 1
        else:
            good.append(mbox.addr_spec)
    return good, bad


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """Everything the policy reads from one message, built once by :func:`parse_message`."""

    headers: HeaderBlock  # without the body (HeaderBlock.without_body)
    msg: email.message.Message | None  # None when the stdlib parser gave up
    size: int
    visible: tuple[Recipient, ...]
    defects: tuple[Finding, ...]  # address_defect, header_defect, unscannable
    attachments: tuple[Attachment, ...]

    @property
    def subject(self) -> str:
        return decode_words(self.headers.first("subject"))

    @property
    def message_id(self) -> str:
        return self.headers.first("message-id")

    def visible_addresses(self) -> frozenset[str]:
        return frozenset(r.address for r in self.visible if not r.malformed)


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded for display; the raw text if they do not decode."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - bad charsets and encodings come in many exception types
        return value


def _visible_recipients(block: HeaderBlock) -> tuple[list[Recipient], list[Finding]]:
    recipients: list[Recipient] = []
    defects: list[Finding] = []
    for f in block.fields:
        if f.lname not in VISIBLE_HEADERS:
            continue
        specs, bad = parse_address_list(f.value)
        found = [make_recipient(s, f.name) for s in specs]
        bad += sum(1 for r in found if r.malformed)
        recipients.extend(r for r in found if not r.malformed)
        if bad or field_defect(f):
            # Fail safe: whatever could not be read is counted as one more outside recipient.
            recipients.extend(Recipient("", "", f.name) for _ in range(max(bad, 1)))
            defects.append(Finding(kind=ADDRESS_DEFECT, where=f"header:{f.name}", count=max(bad, 1),
                                   reason="malformed address header"))
    return recipients, defects


def _header_defects(block: HeaderBlock, limits: ScanSettings) -> list[Finding]:
    out = []
    for f in block.fields:
        why = field_defect(f)
        if why and f.lname not in VISIBLE_HEADERS:
            out.append(Finding(kind=HEADER_DEFECT, where=f"header:{f.name or '?'}", reason=why))
    if sum(len(f.raw) for f in block.fields) > limits.max_header_bytes:
        out.append(Finding(kind=HEADER_DEFECT, where="header", reason="header block over the size limit"))
    return out


def _parse_mime(raw: bytes, block: HeaderBlock) -> email.message.Message:
    if any(f.obsolete or not f.name for f in block.fields):
        # The stdlib parser would end the header block at ``CC : x`` or a junk line and read the
        # remaining headers (Content-Type among them) as body; hand it the fields it can read.
        head = b"".join(_tidy(f) for f in block.fields if f.name)
        raw = head + block.body
    tree = split_message(raw)  # the plain case at C speed; the same tree as the stdlib's
    return tree if tree is not None else feed_parse(raw)


# Fed to the parser this much at a time: handed a whole message, it decodes all of it to one
# str and then splits that into lines, peaking at ~8x the message (200 MB for 25 MB); fed in
# pieces it holds one piece at a time (2.7x), and runs no slower.
FEED_CHUNK = 256 * 1024


def feed_parse(raw: bytes, chunk: int = FEED_CHUNK) -> email.message.Message:
    """``email.message_from_bytes(raw)`` (compat32), fed in pieces. The parser keeps a piece's
    unfinished last line for the next (a CR at the end of a piece is not taken for a line end)."""
    parser = email.parser.BytesFeedParser(policy=email.policy.compat32)
    view = memoryview(raw)
    for start in range(0, len(raw), chunk):
        parser.feed(bytes(view[start:start + chunk]))
    return parser.close()


def _tidy(f: HeaderField) -> bytes:
    if not f.obsolete:
        return f.raw
    return f.name.encode("ascii") + b":" + f.raw.split(b":", 1)[1]


def filename_of(part: email.message.Message) -> str | None:
    """``part.get_filename()``, answered without parsing the headers' parameters when neither
    header so much as mentions one, as most parts do (profiled: ~20 µs a call, three calls a part
    between parsing and extraction, a third of a 1 KiB message's decision)."""
    disposition = str(part.get("content-disposition") or "")
    ctype = str(part.get("content-type") or "")
    if "filename" not in disposition.lower() and "name" not in ctype.lower():
        return None  # get_filename() looks for exactly these two parameters
    return part.get_filename()


def _attachments(msg: email.message.Message, limits: ScanSettings) -> list[Attachment]:
    out = []
    for n, part in enumerate(msg.walk()):
        if n >= limits.max_mime_parts:
            break
        name = filename_of(part)
        if name or part.get_content_disposition() == "attachment":
            out.append(Attachment(decode_words(str(name or "")), part.get_content_type()))
    return out


def parse_message(raw: bytes, limits: ScanSettings) -> ParsedMessage:
    """Parse ``raw`` once; never raises for a malformed message (see the module docstring)."""
    block = split_header_block(raw)
    visible, defects = _visible_recipients(block)
    defects += _header_defects(block, limits)
    msg: email.message.Message | None
    try:
        msg = _parse_mime(raw, block)
        attachments = _attachments(msg, limits)
    except Exception as exc:  # noqa: BLE001 - any failure (RecursionError too) is "unscannable"
        msg, attachments = None, []
        defects.append(Finding(kind=UNSCANNABLE, where="message",
                               reason=f"message structure could not be parsed ({type(exc).__name__})"))
    return ParsedMessage(block.without_body(), msg, len(raw), tuple(visible), tuple(defects),
                         tuple(attachments))


def envelope_recipients(envelope: Envelope) -> list[Recipient]:
    return [make_recipient(r) for r in envelope.rcpt_tos]


def hidden_recipients(parsed: ParsedMessage, envelope: Envelope) -> tuple[str, ...]:
    """Envelope recipients (as given) that no visible header names: the BCC recipients."""
    seen = parsed.visible_addresses()
    return tuple(r for r in envelope.rcpt_tos if make_recipient(r).address not in seen)
