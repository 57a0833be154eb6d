"""Structured logging: one JSON object per line on stdout (structlog).

Events carry ids, counts, rule names and finding kinds; never bodies, subjects or identifiers.
Callers pass values through :func:`safe` when they come from a client (it strips CR/LF and
control characters so a crafted address cannot forge a log line).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe(value: str, limit: int = 200) -> str:
    """A client-supplied string made fit for a log line."""
    return _CONTROL.sub("?", value)[:limit]


def configure(*, level: str = "INFO", fmt: str = "json") -> None:
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write() per line (PrintLogger's print() makes two): processes sharing a log file
        # (smtp.processes) would otherwise glue one's line to another's before its newline.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    # aiosmtpd logs every peer at INFO through stdlib logging; keep only its warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
