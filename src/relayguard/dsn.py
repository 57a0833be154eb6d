"""RFC 3464 delivery status notifications (bounces) for recipients that could not be reached.

Built as bytes directly: the email package's content manager refuses ``message/delivery-status``
from bytes, and a fixed layout is easier to check. The DSN returns only the original *headers*
(``text/rfc822-headers``), not the body, so a bounce never carries patient data back out.
"""

from __future__ import annotations

import email.utils
import secrets
from typing import Any

from relayguard.log import safe
from relayguard.store import StoredMessage

_HEADER_LIMIT = 64 * 1024


def _original_headers(raw: bytes | None) -> bytes:
    if not raw:
        return b""
    end = raw.find(b"\r\n\r\n")
    return (raw if end < 0 else raw[: end + 2])[:_HEADER_LIMIT]


def _status(code: int) -> str:
    # 4.4.7: delivery time expired, for recipients given up on while still deferred.
    return f"{code // 100}.0.0" if code >= 500 else "4.4.7"


def build_dsn(msg: StoredMessage, failed: dict[str, dict[str, Any]], *, reporting_mta: str,
              now: float) -> bytes:
    """A multipart/report DSN to ``msg``'s envelope sender listing each failed recipient."""
    boundary = f"=_relayguard_{secrets.token_hex(12)}"
    human = [f"relayguard could not deliver message {msg.id} to these recipients:", ""]
    per_rcpt = []
    for rcpt, r in failed.items():
        code, reply = int(r.get("code") or 0), safe(str(r.get("reply", "")), 200)
        human.append(f"  <{rcpt}>: {code} {reply}")
        per_rcpt.append(f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\n"
                        f"Status: {_status(code)}\r\nDiagnostic-Code: smtp; {code} {reply}\r\n")
    head = (f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
            f"To: <{msg.envelope.mail_from}>\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            f"Date: {email.utils.formatdate(now)}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain=reporting_mta)}\r\n"
            "Auto-Submitted: auto-replied\r\n"  # RFC 3834: nobody may auto-reply to this
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n')
    status = (f"Reporting-MTA: dns; {reporting_mta}\r\nX-Relayguard-Queue-ID: {msg.id}\r\n"
              f"Arrival-Date: {email.utils.formatdate(msg.created_at)}\r\n\r\n" + "\r\n".join(per_rcpt))
    parts = [
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + "\r\n".join(human) + "\r\n",
        "Content-Type: message/delivery-status\r\n\r\n" + status,
    ]
    body = b"".join(f"--{boundary}\r\n{p}\r\n".encode() for p in parts)
    body += (f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode()
             + _original_headers(msg.raw) + f"\r\n--{boundary}--\r\n".encode())
    return head.encode() + b"\r\n" + body
