"""``relayguard serve``: run the relay (SMTP front, delivery worker, web UI).

With ``smtp.processes`` > 1 the relay runs as that many processes sharing the SMTP port
(see supervisor.py); otherwise in this process.
"""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
import typer

from relayguard import log as logging_setup
from relayguard.cli.common import ConfigOption, fail, settings_or_exit
from relayguard.config import Settings
from relayguard.errors import PolicyError
from relayguard.malloc import return_large_buffers


async def _serve(settings: Settings, index: int) -> None:
    from relayguard.app import Relay  # noqa: PLC0415 - keep `relayguard --help` fast

    try:
        relay = Relay(settings, process_index=index)
    except PolicyError as exc:
        fail(f"policy not loaded: {exc}", code=2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await relay.start()
    # What start-up loaded (modules, policy, engine, pools) lives as long as the process: out of
    # the collector's way, full collections under load walk a fraction of the heap. Measured:
    # p99 accept latency at 20 sessions ~120 ms -> ~50 ms (stalls of full collections).
    gc.freeze()
    try:
        await stop.wait()
    finally:
        await relay.stop()


def _run(settings: Settings, index: int = 0) -> None:
    try:
        asyncio.run(_serve(settings, index))
    except OSError as exc:
        fail(f"cannot start: {exc.strerror or exc}", code=1)


def _run_child(settings: Settings, index: int) -> int:
    """One of several relay processes (runs in the forked child); its exit code."""
    structlog.contextvars.bind_contextvars(process=index)
    try:
        _run(settings, index)
    except typer.Exit as exc:
        return int(exc.exit_code)
    return 0


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(config: ConfigOption = None) -> None:
        """Run the relay until SIGTERM or Ctrl-C."""
        settings = settings_or_exit(config)
        logging_setup.configure(level=settings.log.level, fmt=settings.log.format)
        return_large_buffers()
        if settings.smtp.processes == 1:
            _run(settings)
            return
        from relayguard.supervisor import Supervisor  # noqa: PLC0415

        code = Supervisor(settings.smtp.processes, lambda i: _run_child(settings, i)).run()
        if code:
            raise typer.Exit(code)
