"""``relayguard serve``: run the relay (SMTP front, delivery worker, web UI) in one process."""

from __future__ import annotations

import asyncio
import signal

import typer

from relayguard import log as logging_setup
from relayguard.cli.common import ConfigOption, fail, settings_or_exit
from relayguard.config import Settings
from relayguard.errors import PolicyError


async def _serve(settings: Settings) -> None:
    from relayguard.app import Relay  # noqa: PLC0415 - keep `relayguard --help` fast

    try:
        relay = Relay(settings)
    except PolicyError as exc:
        fail(f"policy not loaded: {exc}", code=2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await relay.start()
    try:
        await stop.wait()
    finally:
        await relay.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(config: ConfigOption = None) -> None:
        """Run the relay until SIGTERM or Ctrl-C."""
        settings = settings_or_exit(config)
        logging_setup.configure(level=settings.log.level, fmt=settings.log.format)
        try:
            asyncio.run(_serve(settings))
        except OSError as exc:
            fail(f"cannot start: {exc.strerror or exc}", code=1)
