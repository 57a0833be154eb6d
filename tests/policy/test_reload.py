"""Live reload: a valid edit takes over, a broken edit is refused and the old policy stays."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from structlog.testing import capture_logs

from relayguard.policy.reload import PolicyHolder, install_sighup, watch

GOOD = "rules:\n  - name: first\n    then: {tag_subject: '[a]'}\n"
EDITED = "rules:\n  - name: second\n    then: {tag_subject: '[b]'}\n"
BROKEN = "rules:\n  - name: third\n    then: {acton: hold}\n"


def holder_at(tmp_path: Path) -> PolicyHolder:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    return PolicyHolder(path)


def test_reload_swaps_in_a_valid_edit(tmp_path: Path) -> None:
    """After a valid edit, reload() puts the new rules and version in force and logs it."""
    holder = holder_at(tmp_path)
    old = holder.version
    holder.path.write_text(EDITED)
    with capture_logs() as logs:
        assert holder.reload() is True
    assert [r.name for r in holder.current.rules] == ["second"]
    assert logs == [{"event": "policy.reloaded", "log_level": "info", "path": str(holder.path),
                     "old_version": old, "version": holder.version, "rules": 1}]


def test_broken_edit_is_refused_and_old_policy_kept(tmp_path: Path) -> None:
    """A broken edit logs the issue with its position and leaves the old policy in force."""
    holder = holder_at(tmp_path)
    before = holder.current
    holder.path.write_text(BROKEN)
    with capture_logs() as logs:
        assert holder.reload() is False
    assert holder.current is before
    assert logs[0]["event"] == "policy.reload_refused"
    assert logs[0]["issues"] == [f"{holder.path}:3:12: rules[0].then.acton: unknown key 'acton' "
                                 "(did you mean 'action'?)"]


def test_unchanged_file_is_not_a_new_version(tmp_path: Path) -> None:
    """Reloading the same bytes keeps the same object and reports no change."""
    holder = holder_at(tmp_path)
    before = holder.current
    assert holder.reload() is False
    assert holder.current is before


async def test_watch_picks_up_a_changed_file(tmp_path: Path) -> None:
    """The watch task reloads the policy when the file is replaced, without a restart."""
    holder = holder_at(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(watch(holder, stop_event=stop, debounce_ms=50))
    await asyncio.sleep(0.5)  # let the watcher start before the edit
    tmp = tmp_path / "policy.yaml.new"
    tmp.write_text(EDITED)
    tmp.replace(holder.path)  # how editors save
    for _ in range(100):
        if holder.current.rules[0].name == "second":
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert holder.current.rules[0].name == "second"


async def test_sighup_reloads(tmp_path: Path) -> None:
    """SIGHUP to the process reloads the policy through the installed handler."""
    holder = holder_at(tmp_path)
    loop = asyncio.get_running_loop()
    install_sighup(loop, holder)
    try:
        holder.path.write_text(EDITED)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(50):
            if holder.current.rules[0].name == "second":
                break
            await asyncio.sleep(0.02)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
    assert holder.current.rules[0].name == "second"
