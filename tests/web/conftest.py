"""Web tests: the app over a real SQLite store, driven through httpx's ASGI transport."""

import sys
from pathlib import Path

# The store, settings and people fixtures live beside the quarantine tests; share them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quarantine"))

from browsing import app, client  # noqa: F401 - fixtures
from seeding import clock, people, settings, store  # noqa: F401 - fixtures
