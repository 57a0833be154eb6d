"""The review web UI (FastAPI + Jinja2, server-rendered). ``create_app(settings, store)``."""

from relayguard.web.app import create_app

__all__ = ["create_app"]
