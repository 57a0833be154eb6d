"""The upstream every path delivers to: Postfix's ``smtp-sink``, counting completed DATA commands.

``smtp-sink -c`` writes a running ``sess=N quit=N mesg=N`` counter, separated by ``\\r``, to stdout after
every event. We send that to a file and read its last bytes: cheaper than a Python sink (which would
become the bottleneck of the ceiling path) and no pipe to drain.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import procs

SMTP_SINK = "/usr/sbin/smtp-sink"
_MESG = re.compile(rb"mesg=(\d+)")


class Sink:
    def __init__(self, workdir: Path) -> None:
        self.port = procs.free_port()
        self.counter = workdir / f"sink-{self.port}.out"
        # -u: smtp-sink refuses to keep root; backlog 1024 so 20 sessions never see a refused connect.
        self.argv = [SMTP_SINK, "-u", "nobody", "-c", f"{procs.LOOPBACK}:{self.port}", "1024"]
        self.proc = procs.spawn("smtp-sink", self.argv, log=self.counter)
        procs.wait_smtp_banner(self.port, timeout=10, proc=self.proc)

    def count(self) -> int:
        """Messages whose DATA completed so far (the counter's last value)."""
        try:
            with open(self.counter, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256))
                tail = f.read()
        except OSError:
            return 0
        found = _MESG.findall(tail)
        return int(found[-1]) if found else 0

    def wait_for(self, n: int, *, timeout: float, poll: float = 0.005) -> tuple[bool, float]:
        """Wait until the sink has ``n`` messages; (reached, monotonic time it was seen)."""
        end = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.count() >= n:
                return True, now
            if now > end:
                return False, now
            time.sleep(poll)

    def stop(self) -> None:
        procs.stop(self.proc)
