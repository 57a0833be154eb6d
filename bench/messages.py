"""The messages the bench sends, generated once into bench/.cache/messages and reused.

All content is clean (no identifiers, dates of birth or postcodes) so that relayguard's default policy
delivers rather than holds: the bench measures the delivery path. Files use LF line endings because
``smtp-source -F`` appends CRLF to every line itself; ``latency_client`` converts them the same way.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from openpyxl import Workbook

SENDER = "reception@oakfield-surgery.nhs.uk"
RECIPIENT = "gp.referrals@nhs.net"

_WORDS = [
    "appointment",
    "clinic",
    "review",
    "practice",
    "surgery",
    "nurse",
    "pharmacy",
    "prescription",
    "repeat",
    "referral",
    "letter",
    "results",
    "follow",
    "routine",
    "annual",
    "reminder",
    "booking",
    "morning",
    "afternoon",
    "waiting",
    "room",
    "please",
    "contact",
    "reception",
    "team",
    "thank",
    "you",
    "kind",
    "regards",
    "the",
    "and",
    "of",
    "to",
    "for",
    "with",
    "about",
    "on",
    "at",
    "service",
    "update",
    "week",
    "month",
    "holiday",
    "cover",
    "rota",
    "training",
    "meeting",
    "agenda",
    "minutes",
    "actions",
    "notes",
    "stock",
    "order",
    "supplier",
]


@dataclass(frozen=True)
class Workload:
    """One message shape: its key in results, the file smtp-source sends, and its size."""

    key: str
    label: str
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def prose(rng: random.Random, nbytes: int) -> str:
    """Lines of plain words (no digits at all, so no detector can fire) totalling ~``nbytes``.

    Lines stay under 78 characters so the body goes as 7bit text, not quoted-printable.
    """
    lines: list[str] = []
    total = 0
    while total < nbytes:
        line = " ".join(rng.choice(_WORDS) for _ in range(8)).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def _base(subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Oakfield Surgery Reception <{SENDER}>"
    msg["To"] = f"GP Referrals <{RECIPIENT}>"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    msg["Message-ID"] = f"<bench-{subject.lower().replace(' ', '-')}@oakfield-surgery.nhs.uk>"
    msg.set_content(body)
    return msg


def _write(msg: EmailMessage, path: Path) -> None:
    # linesep "\n": smtp-source -F turns each line into a CRLF line on the wire.
    path.write_bytes(msg.as_bytes(policy=msg.policy.clone(linesep="\n")))


def _text_message(path: Path, size: int, rng: random.Random) -> None:
    """A plain-text message of ~``size`` bytes in all (headers included)."""
    header_room = 330
    _write(_base("Practice update", prose(rng, max(64, size - header_room))), path)


def _attachment_message(path: Path, size: int, rng: random.Random, name: str) -> None:
    """A short letter plus a text attachment; base64 makes the attachment 4/3 of its text."""
    msg = _base("Meeting notes attached", prose(rng, 600))
    # base64 adds 4/3 plus a newline every 76 characters.
    raw_len = max(1024, int((size - 1600) * 3 / 4 / (1 + 1 / 76)))
    msg.add_attachment(prose(rng, raw_len).encode(), maintype="text", subtype="plain", filename=name)
    _write(msg, path)


def xlsx_bytes(target: int, rng: random.Random) -> bytes:
    """A stock-list workbook of about ``target`` bytes: codes, item names, small counts and prices."""

    def build(rows: int) -> bytes:
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("Stock")
        ws.append(["Code", "Item", "Quantity", "Unit price", "Supplier"])
        for _ in range(rows):
            code = "SKU-" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(8))
            item = f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}"
            ws.append([code, item, rng.randint(1, 500), round(rng.uniform(0.5, 99.0), 2), rng.choice(_WORDS)])
        buf = io.BytesIO()
        wb.save(buf)
        return buf.getvalue()

    probe = 5000
    sample = build(probe)
    return build(max(probe, int(probe * target / len(sample))))


def _xlsx_message(path: Path, size: int, rng: random.Random) -> None:
    msg = _base("Stock list for this month", prose(rng, 600))
    msg.add_attachment(
        xlsx_bytes(size, rng),
        maintype="application",
        subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        filename="stock-list.xlsx",
    )
    _write(msg, path)


def prepare(cache: Path) -> dict[str, Workload]:
    """Generate missing message files (seeded, so every run sends the same bytes) and describe them."""
    folder = cache / "messages"
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        "1k": ("1 KiB text", "1k.eml", lambda p, r: _text_message(p, 1024, r)),
        "100k": (
            "100 KiB (text attachment)",
            "100k.eml",
            lambda p, r: _attachment_message(p, 100 * 1024, r, "notes.txt"),
        ),
        "xlsx": ("2 MB xlsx attachment", "xlsx.eml", lambda p, r: _xlsx_message(p, 2_100_000, r)),
        "25m": (
            "25 MiB (text attachment)",
            "25m.eml",
            lambda p, r: _attachment_message(p, 25 * 1024 * 1024, r, "archive.txt"),
        ),
    }
    out: dict[str, Workload] = {}
    for key, (label, filename, make) in specs.items():
        path = folder / filename
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            make(tmp, random.Random(f"relayguard-bench-{key}"))
            tmp.replace(path)
        out[key] = Workload(key, label, path)
    return out
