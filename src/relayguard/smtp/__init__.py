"""The SMTP front: receive, authenticate, hand to the engine, reply."""

from relayguard.smtp.handler import FrontLimits, RelayHandler, reply_for
from relayguard.smtp.server import start_server

__all__ = ["FrontLimits", "RelayHandler", "reply_for", "start_server"]
