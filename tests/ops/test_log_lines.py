"""The relay's log lines as ``relayguard serve`` writes them: one JSON object per line, whatever
a client put in the values (each case runs in a fresh interpreter: logging is configured once)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import os, sys
from relayguard import log
log.configure(level=os.environ.get("LEVEL", "INFO"))
logger = log.get_logger("relayguard.test")
logger.info("smtp.transaction", queue_id="q1", size=1075, rules=["r"], findings={"nhs_number": 2},
            subject=log.safe("caf\u00e9 \udcff line\r\nbreak"), counts={250: 3}, ratio=0.5, none=None)
logger.debug("hidden.at.info")
logger.warning("delivery.deferred", error=ValueError("boom"))
"""


def _lines(level: str = "INFO") -> list[dict[str, object]]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True, timeout=60,
                         env={"LEVEL": level, "PATH": ""})
    assert out.stderr == b""
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_each_event_is_one_json_line_with_its_values() -> None:
    first, second = _lines()
    assert first["event"] == "smtp.transaction" and first["level"] == "info"
    assert first["queue_id"] == "q1" and first["size"] == 1075 and first["ratio"] == 0.5
    assert first["findings"] == {"nhs_number": 2} and first["counts"] == {"250": 3}
    assert first["none"] is None and first["rules"] == ["r"]
    # A lone surrogate (an undecodable byte a client sent) and controls survive as text.
    assert first["subject"] == "caf\u00e9 \udcff line??break"
    assert str(first["timestamp"]).endswith("Z")
    assert second["event"] == "delivery.deferred" and second["error"] == "ValueError('boom')"  # repr


def test_the_level_filters() -> None:
    assert [e["event"] for e in _lines("DEBUG")] == ["smtp.transaction", "hidden.at.info",
                                                       "delivery.deferred"]
