"""Processes the bench starts: each in its own session, tracked, and stopped by its pid at the end.

Every child runs in a new session (``start_new_session``) so that Ctrl-C in the terminal reaches only the
driver, which then stops each child itself, in order, by process group: nothing is left listening on a
loopback port after a run, whatever way it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"  # the only address any bench traffic goes to


class Proc:
    """One started child (and its process group), plus stray pids it left, e.g. a daemon's master."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = popen
        self.extra_pids: list[int] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group, then SIGKILL to whatever is left after ``grace`` seconds."""
        _signal_group(self.pid, signal.SIGTERM)
        for pid in self.extra_pids:
            _signal_pid(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        _signal_group(self.pid, signal.SIGKILL)
        for pid in self.extra_pids:
            _signal_pid(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)


_STARTED: list[Proc] = []


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> Proc:
    """Start ``argv`` in a new session, output to ``log`` (a file never blocks as an unread pipe does)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    proc = Proc(name, popen)
    _STARTED.append(proc)
    return proc


def register(proc: Proc) -> Proc:
    """Track a child started elsewhere (with ``start_new_session``) so ``stop_all`` stops it too."""
    _STARTED.append(proc)
    return proc


def stop(proc: Proc | None) -> None:
    if proc is None:
        return
    proc.stop()
    with contextlib.suppress(ValueError):
        _STARTED.remove(proc)


def stop_all() -> None:
    """Stop every child still tracked, newest first (servers after the clients that talk to them)."""
    while _STARTED:
        proc = _STARTED.pop()
        with contextlib.suppress(Exception):
            proc.stop(grace=3.0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_smtp_banner(port: int, *, timeout: float, proc: Proc | None = None) -> None:
    """Block until something on ``port`` greets with 220, so a measurement never includes start-up."""
    end = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = banner[:80].decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"no 220 greeting on {LOOPBACK}:{port} after {timeout:.0f} s ({last})")


def run_checked(argv: Sequence[str], *, timeout: float = 120, env: Mapping[str, str] | None = None) -> str:
    """A short helper command; its output is returned, a failure raises with the output attached."""
    res = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env else None,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {(res.stderr or res.stdout)[-800:]}")
    return res.stdout


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name, from the state on (proc(5) numbers
    them from 3: the parent pid is [1], utime and stime [11] and [12]). Raises OSError for a
    process that is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live process below them (by parent pid), read from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[int(entry)] = int(stat_fields(int(entry))[1])
    found = {r for r in roots if r in parent}
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found
