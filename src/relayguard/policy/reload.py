"""Live reload: the policy in force, swapped on SIGHUP or when its file changes.

An invalid edit never replaces a working policy: :meth:`PolicyHolder.reload` logs
``policy.reload_refused`` with every issue (file:line:column: reason) and keeps the old one.
Swapping is one attribute assignment, so a decision in flight keeps the policy it started with.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import structlog
import watchfiles

from relayguard.policy.loader import LoadedPolicy, PolicyFileError, load_policy

log = structlog.get_logger("relayguard.policy")


class PolicyHolder:
    """Holds the policy in force; :attr:`current` is what the next decision uses."""

    def __init__(self, path: Path, initial: LoadedPolicy | None = None, *,
                 on_change: Callable[[str, LoadedPolicy], None] | None = None) -> None:
        self.path = path
        # Told (old version, new policy) after each successful reload, e.g. to audit it.
        self.on_change = on_change
        # Loading at construction lets a broken policy stop `serve` before it listens.
        self._current = initial if initial is not None else load_policy(path)

    @property
    def current(self) -> LoadedPolicy:
        return self._current

    @property
    def version(self) -> str:
        return self._current.version

    def reload(self) -> bool:
        """Load the file again; True when a new version is now in force."""
        try:
            fresh = load_policy(self.path)
        except PolicyFileError as exc:
            log.warning("policy.reload_refused", path=str(self.path), kept_version=self.version,
                        issues=[str(i) for i in exc.issues])
            return False
        if fresh.version == self.version:
            return False
        old, self._current = self.version, fresh
        log.info("policy.reloaded", path=str(self.path), old_version=old, version=fresh.version,
                 rules=len(fresh.rules))
        if self.on_change is not None:
            self.on_change(old, fresh)
        return True


async def watch(holder: PolicyHolder, *, stop_event: asyncio.Event | None = None,
                debounce_ms: int = 300) -> None:
    """Reload ``holder`` whenever its file changes, until cancelled or ``stop_event`` is set.

    The folder is watched rather than the file: editors save by writing a new file and renaming
    it over the old one, which a watch on the old inode would miss.
    """
    target = holder.path.resolve()

    def ours(_change: watchfiles.Change, path: str) -> bool:
        return Path(path).resolve() == target

    async for _changes in watchfiles.awatch(target.parent, watch_filter=ours, stop_event=stop_event,
                                            debounce=debounce_ms, recursive=False):
        holder.reload()


def install_sighup(loop: asyncio.AbstractEventLoop, holder: PolicyHolder) -> None:
    """Reload ``holder`` on SIGHUP (the conventional "re-read your configuration" signal)."""
    loop.add_signal_handler(signal.SIGHUP, holder.reload)
