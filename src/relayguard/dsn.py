"""RFC 3464 delivery status notifications (bounces) for recipients that could not be reached.

The DSN returns only the original *headers* (``text/rfc822-headers``), not the body, so a bounce
never carries patient data back out through a second route.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from typing import Any

from relayguard.store import StoredMessage

_HEADER_LIMIT = 64 * 1024


def _original_headers(raw: bytes | None) -> bytes:
    if not raw:
        return b""
    end = raw.find(b"\r\n\r\n")
    return (raw if end < 0 else raw[: end + 2])[:_HEADER_LIMIT]


def build_dsn(msg: StoredMessage, failed: dict[str, dict[str, Any]], *, reporting_mta: str,
              now: float) -> bytes:
    """A multipart/report DSN to ``msg``'s envelope sender listing each failed recipient."""
    report = EmailMessage()
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = msg.envelope.mail_from
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(now)
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: nobody may auto-reply to this
    lines = [f"relayguard could not deliver message {msg.id} to these recipients:", ""]
    lines += [f"  <{rcpt}>: {r.get('code', 0)} {r.get('reply', '')}" for rcpt, r in failed.items()]
    report.set_content("\n".join(lines) + "\n")
    per_rcpt = []
    for rcpt, r in failed.items():
        code = int(r.get("code") or 0)
        status = f"{code // 100}.0.0" if code >= 400 else "4.4.7"  # 4.4.7: delivery time expired
        per_rcpt.append(
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
            f"Diagnostic-Code: smtp; {code} {str(r.get('reply', ''))[:200]}\r\n")
    status_body = (f"Reporting-MTA: dns; {reporting_mta}\r\nX-Relayguard-Queue-ID: {msg.id}\r\n"
                   f"Arrival-Date: {email.utils.formatdate(msg.created_at)}\r\n\r\n"
                   + "\r\n".join(per_rcpt))
    report.add_attachment(status_body.encode(), maintype="message", subtype="delivery-status",
                          cte="7bit")
    report.add_attachment(_original_headers(msg.raw), maintype="text", subtype="rfc822-headers",
                          cte="8bit")
    report.replace_header("Content-Type", "multipart/report; report-type=delivery-status; "
                          f'boundary="{report.get_boundary()}"')
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
