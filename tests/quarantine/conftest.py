"""Quarantine tests share the store, settings and people fixtures with the web tests."""

from seeding import clock, people, settings, store  # noqa: F401 - fixtures
