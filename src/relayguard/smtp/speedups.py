"""Two hot spots of aiosmtpd, taken off the per-message path without changing what it does.

Profiled under load (20 sessions, one message per connection, as mail clients and smtp-source
send): ~9 % of the relay's CPU went to ``SMTP.__init__`` looking up AUTH methods with
``inspect.getmembers``, which evaluates every property of the protocol on every connection, and
~8 % to parsing MAIL/RCPT addresses with the ``email`` package's header parser. After those,
``SMTP.__init__`` still spent two thirds of its 56 µs listing ``dir()`` of the protocol and the
handler to find their ``smtp_*`` and ``handle_*`` methods: the listing is now made once per class.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable
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


# The prefixes aiosmtpd lists dir() for (SMTP.__init__: smtp_* commands, handle_* hooks); it
# throws every other name away, so listing only these saves it ~200 tests per connection.
_LISTED = ("smtp_", "handle_")


@functools.cache
def _class_dir(cls: type) -> tuple[list[str], frozenset[str]]:
    names = dir(cls)
    return [n for n in names if n.startswith(_LISTED)], frozenset(names)


def _dir(obj: Any) -> list[str]:
    """``dir(obj)`` as aiosmtpd uses it (to find methods by prefix): the class's names with those
    prefixes, listed once per class, then the instance's own (none of them methods, so order
    does not matter)."""
    cls: Any = type(obj)  # a class is hashable; typeshed cannot say so of type[Any]
    names, known = _class_dir(cls)
    own = getattr(obj, "__dict__", None)
    if not own:
        return names
    return names + [n for n in own if n.startswith(_LISTED) and n not in known]


_sanitized_log = aiosmtpd.smtp.sanitized_log


def sanitized_log(func: Callable[..., None], msg: str, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log``, which first asks whether the line would be logged at all.
    aiosmtpd logs every command line twice through it (DEBUG and INFO), masking AUTH data in
    the arguments first, and we keep only its warnings (relayguard.log): ~2 % of the relay's
    CPU under load went to masking lines nobody wrote."""
    logger = getattr(func, "__self__", None)
    if isinstance(logger, logging.Logger):
        level = logging.getLevelName(func.__name__.upper())
        if isinstance(level, int) and not logger.isEnabledFor(level):
            return
    _sanitized_log(func, msg, *args, **kwargs)


def install() -> None:
    """Point aiosmtpd's module-level ``inspect`` at a copy whose ``getmembers`` is cached per
    class, its ``dir`` at :func:`_dir` and its ``sanitized_log`` at ours. Only
    ``aiosmtpd.smtp`` sees them; idempotent."""
    if isinstance(getattr(aiosmtpd.smtp, "inspect", None), SimpleNamespace):
        return
    setattr(aiosmtpd.smtp, "sanitized_log", sanitized_log)  # noqa: B010
    setattr(aiosmtpd.smtp, "dir", _dir)  # noqa: B010 - a module global shadows the builtin
    names = {name: getattr(inspect, name) for name in dir(inspect) if not name.startswith("__")}
    setattr(aiosmtpd.smtp, "inspect", SimpleNamespace(**{**names, "getmembers": _auth_members}))  # noqa: B010
