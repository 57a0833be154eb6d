"""Two hot spots of aiosmtpd, taken off the per-message path without changing what it does.

Profiled under load (20 sessions, one message per connection, as mail clients and smtp-source
send): ~9 % of the relay's CPU went to ``SMTP.__init__`` looking up AUTH methods with
``inspect.getmembers``, which evaluates every property of the protocol on every connection, and
~8 % to parsing MAIL/RCPT addresses with the ``email`` package's header parser.
"""

from __future__ import annotations

import functools
import inspect
import re
from types import SimpleNamespace
from typing import Any

import aiosmtpd.smtp

# RFC 5321 Mailbox in its common form: a dot-atom local part and a plain domain, in angle
# brackets, then the parameters. Anything else (quoted local parts, address literals, comments,
# no brackets, non-ASCII) goes to aiosmtpd's full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    # aiosmtpd's parser drops the blanks (and comments) after ">": parameters start after them.
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+([^ \t(].*))?",
    re.DOTALL)


def simple_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` exactly as aiosmtpd's ``_getaddr`` returns them, for the common form
    only; None when the full parser must decide."""
    match = _SIMPLE_PATH.fullmatch(arg.lstrip(" \t"))
    return (match[1], match[2] or "") if match else None


@functools.cache
def _auth_names(cls: type) -> tuple[str, ...]:
    return tuple(name for name in dir(cls) if name.startswith("auth_"))


def _auth_members(obj: Any) -> list[tuple[str, Any]]:
    """What ``inspect.getmembers(obj)`` gives for the ``auth_*`` names, which is all aiosmtpd
    asks it for; found per class once. (Instance attributes named ``auth_*`` would be missed:
    neither our protocol nor our handler has any.)"""
    cls: Any = type(obj)  # a class is hashable; typeshed cannot say so of type[Any]
    return [(name, getattr(obj, name)) for name in _auth_names(cls)]


def install() -> None:
    """Point aiosmtpd's module-level ``inspect`` at a copy whose ``getmembers`` is cached per
    class. Only ``aiosmtpd.smtp`` sees it; idempotent."""
    if isinstance(getattr(aiosmtpd.smtp, "inspect", None), SimpleNamespace):
        return
    names = {name: getattr(inspect, name) for name in dir(inspect) if not name.startswith("__")}
    setattr(aiosmtpd.smtp, "inspect", SimpleNamespace(**{**names, "getmembers": _auth_members}))  # noqa: B010
