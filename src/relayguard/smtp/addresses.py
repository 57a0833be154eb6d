"""Envelope address checks at MAIL and RCPT: refuse what could smuggle routing past the policy.

Source routes (``<@a:b@c>``), the percent hack (``user%host@x``), quoted local parts,
IP-literal domains and control characters are refused by default: each is a way to make the
upstream route mail somewhere other than the address the policy judged.
"""

from __future__ import annotations

import re

# Dot-atom local part without '%' (percent hack) or quotes; a domain of LDH labels with a dot.
_LOCAL = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$&'*+/=?^_`{|}~-]+)*"
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
_ADDRESS = re.compile(rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})+")
_U_LOCAL = r"[^\s@\"%\\\x00-\x1f\x7f]+"
_U_LABELS = r"[^\s@\[\]%\\\x00-\x1f\x7f]+"
_UTF8_ADDRESS = re.compile(rf"{_U_LOCAL}@{_U_LABELS}\.{_U_LABELS}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def address_problem(address: str, *, utf8: bool = False) -> str | None:
    """Why ``address`` may not be used in the envelope, or None when it is fine."""
    if _CONTROL.search(address):
        return "control characters in address"
    if address.startswith("@") or ":" in address:
        return "source routes are not accepted"
    if "%" in address or "!" in address:  # user%host@relay, host!user@relay (UUCP bang path)
        return "percent-hack or bang-path routing is not accepted"
    if '"' in address or "\\" in address:
        return "quoted local parts are not accepted"
    if "[" in address:
        return "IP-literal domains are not accepted"
    if len(address) > 254:
        return "address too long"
    pattern = _UTF8_ADDRESS if utf8 and not address.isascii() else _ADDRESS
    if not pattern.fullmatch(address):
        return "malformed address"
    return None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
