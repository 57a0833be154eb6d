"""Structured logging: one JSON object per line on stdout (structlog).

Events carry ids, counts, rule names and finding kinds; never bodies, subjects or identifiers.
Callers pass values through :func:`safe` when they come from a client (it strips CR/LF and
control characters so a crafted address cannot forge a log line).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe(value: str, limit: int = 200) -> str:
    """A client-supplied string made fit for a log line."""
    return _CONTROL.sub("?", value)[:limit]


def _dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """JSON for a log line: orjson (a third of the stdlib encoder's time; two lines a message),
    or the stdlib for what orjson refuses, such as a lone surrogate from undecodable client bytes
    (which the stdlib writes as an escape)."""
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(obj, default=default).encode("ascii")


def configure(*, level: str = "INFO", fmt: str = "json") -> None:
    """Logging for ``relayguard serve``: call once, before anything logs (loggers are cached on
    first use, which saves building one per line)."""
    json_lines = fmt == "json"
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps) if json_lines
                     else structlog.dev.ConsoleRenderer(colors=False))
    # One write() per line (PrintLogger's print() makes two): processes sharing a log file
    # (smtp.processes) would otherwise glue one's line to another's before its newline.
    factory: Any = (structlog.BytesLoggerFactory(file=sys.stdout.buffer) if json_lines
                    else structlog.WriteLoggerFactory(file=sys.stdout))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiosmtpd logs every peer at INFO through stdlib logging; keep only its warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
