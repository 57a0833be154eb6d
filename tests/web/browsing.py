"""Helpers for the web tests: the app over a real SQLite store, browsers (cookie jars), login, CSRF."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from seeding import PASSWORD

from relayguard.config import Settings
from relayguard.store import Store
from relayguard.web import create_app

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def app(settings: Settings, store: Store, people: dict) -> FastAPI:
    return create_app(settings, store)


Client = Callable[..., "httpx.AsyncClient"]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    """A factory of independent browsers (cookie jars) against the same app."""
    made: list[httpx.AsyncClient] = []

    def make() -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "page has no CSRF token"
    return found.group(1)


async def login(c: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    page = await c.get("/login")
    return await c.post("/login", data={"csrf": csrf_of(page.text), "username": name,
                                        "password": password, "next": "/held"})


async def csrf_for(c: httpx.AsyncClient, path: str = "/held") -> str:
    return csrf_of((await c.get(path)).text)
