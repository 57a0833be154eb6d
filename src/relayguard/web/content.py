"""What a reviewer sees of a held message: headers, text parts and attachment names, masked.

Only text is shown (``text/*`` parts, decoded); binary attachments appear by name and size. The
masking is the detection package's ``mask_text`` (valid NHS/CHI/H&C numbers, dates of birth), then
any remaining 10-digit run, so that a number with a bad checksum is not shown either.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

_TEN_DIGITS = re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)")
SHOWN_HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID")
MAX_PART_CHARS = 200_000  # a page, not a download: longer text is cut with a note


def _fallback_mask(text: str) -> str:
    return _TEN_DIGITS.sub(lambda m: re.sub(r"\d", "*", m.group()), text)


def _detector_mask() -> Callable[[str], str]:
    try:
        from relayguard.detect.masking import mask_text  # noqa: PLC0415 - optional at import time
    except ImportError:  # pragma: no cover - the detection package ships with relayguard
        return _fallback_mask
    return mask_text


_mask_ids = _detector_mask()


def mask(text: str) -> str:
    return _fallback_mask(_mask_ids(text))


@dataclass(frozen=True, slots=True)
class Part:
    label: str  # "body (text/plain)" or "attachment: list.csv"
    text: str
    truncated: bool = False


@dataclass(slots=True)
class Content:
    headers: list[tuple[str, str]] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    attachments: list[tuple[str, str, int]] = field(default_factory=list)  # name, type, bytes
    purged: bool = False


def _text_of(part: EmailMessage) -> str:
    try:
        value = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset, bad transfer encoding
        payload = part.get_payload(decode=True)
        value = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return value if isinstance(value, str) else ""


def extract(raw: bytes | None, *, unmasked: bool = False) -> Content:
    """Parse ``raw`` (stdlib email) into what the review page shows; masked unless ``unmasked``."""
    if raw is None:
        return Content(purged=True)
    show = (lambda s: s) if unmasked else mask
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    content = Content(headers=[(h, show(str(msg[h]))) for h in SHOWN_HEADERS if msg[h] is not None])
    for part in msg.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        ctype = part.get_content_type()
        if filename:
            payload = part.get_payload(decode=True)
            content.attachments.append((filename, ctype, len(payload) if isinstance(payload, bytes) else 0))
        if part.get_content_maintype() != "text":
            continue
        text = _text_of(part)
        label = f"attachment: {filename}" if filename else f"body ({ctype})"
        content.parts.append(Part(label=label, text=show(text[:MAX_PART_CHARS]),
                                  truncated=len(text) > MAX_PART_CHARS))
    return content
