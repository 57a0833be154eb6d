"""End to end in a real browser: a message with an NHS number is held over SMTP and released on the web."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from browsing import csrf_of
from seeding import PASSWORD

from relayguard.auth import hash_password
from relayguard.store import State

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Screenshots for docs/ only when asked (RELAYGUARD_SCREENSHOTS=1), so a test run leaves the tree clean.
SHOTS = ROOT / "docs" / "screenshots"
CORPUS = Path(os.environ.get("RELAYGUARD_CORPUS", "/work/shared/corpus"))
NHS = "4366141345"  # in nhs-number-to-gmail.eml
SENDER = "reception@oakfield-surgery.nhs.uk"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Debian chromium; skipped (visibly) without it unless the CI demands a browser."""
    if not CHROMIUM.exists():
        if os.environ.get("RELAYGUARD_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and RELAYGUARD_TEST_REQUIRE_BROWSER=1")
        pytest.skip(f"{CHROMIUM} not installed: apt-get install chromium to run the browser tests")
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only with a browser

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        await b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_up(url: str) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(100):
            try:
                if (await c.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"web UI did not come up at {url}")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = SHOTS if os.environ.get("RELAYGUARD_SCREENSHOTS") == "1" else tmp_path
    where.mkdir(parents=True, exist_ok=True)
    return where


async def _login(browser: Any, base: str, name: str, shot: Path | None = None) -> Any:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{base}/login")
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    if shot:
        await page.screenshot(path=str(shot), full_page=True)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{base}/held")
    return page


async def _shot(page: Any, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)


def _tamper(path: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET actor='someone-else' WHERE action='approved'")


async def _cli(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the event loop: the relay under test runs in this loop, and
    a loop frozen mid-transaction would hold the database's writer lock for as long as the CLI
    waits for it."""
    env = {**os.environ, "RELAYGUARD_STORE__URL": store_url, "COLUMNS": "300"}
    return await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).with_name("relayguard")), *args], env=env,
        capture_output=True, text=True, timeout=60, check=False)


async def test_held_message_released_by_second_person(browser: Any, relay_factory: Any, sink: Any,
                                                       store_url: str, shots: Path) -> None:
    """Held over SMTP; the sender cannot approve; a reviewer unmasks with a reason and approves;
    the sink gets it; the audit view lists every step; audit verify passes, then fails after an edit."""
    port = _free_port()
    relay = await relay_factory(web={"enabled": True, "listen": f"127.0.0.1:{port}",
                                     "secret_key": "browser-test-secret"})
    base = f"http://127.0.0.1:{port}"
    hashed = hash_password(PASSWORD)
    for name, role, addr in (("alice", "sender", SENDER), ("rita", "reviewer", "rita@practice.nhs.uk"),
                             ("ada", "admin", "ada@practice.nhs.uk")):
        await relay.store.add_user(name=name, password_hash=hashed, role=role, email=addr)
    raw = (CORPUS / "nhs-number-to-gmail.eml").read_bytes()
    rcpt = "poppy.smith0@btinternet.com"
    await aiosmtplib.send(raw, sender=SENDER, recipients=[rcpt], hostname="127.0.0.1",
                          port=relay.smtp_port, start_tls=False, use_tls=False)
    (held,) = await relay.store.list_messages(states=[State.HELD], origin="client")
    await _wait_up(f"{base}/login")

    # The sender sees their message and may ask for release, but has no way to approve it.
    alice = await _login(browser, base, "alice", shot=shots / "login.png")
    await _shot(alice, shots / "held-sender.png")
    await alice.get_by_role("link", name="Your results").click()
    assert await alice.get_by_role("button", name="Approve").count() == 0
    assert NHS not in await alice.content()
    await _shot(alice, shots / "message-sender.png")
    forced = await alice.context.request.post(f"{base}/messages/{held.id}/approve",
                                              form={"csrf": csrf_of(await alice.content())})
    assert forced.status == 403

    # A reviewer sees masked identifiers, unmasks with a reason, approves.
    rita = await _login(browser, base, "rita")
    await _shot(rita, shots / "held.png")
    await rita.get_by_role("link", name="Your results").click()
    assert NHS not in await rita.content()
    await _shot(rita, shots / "message.png")
    await rita.get_by_label("Why do you need to see the identifiers?").fill("confirm the patient")
    await rita.get_by_role("button", name="Show unmasked").click()
    await rita.get_by_text("UNMASKED (audited)").wait_for()
    assert NHS in await rita.content()
    await rita.get_by_role("button", name="Approve").click()
    await rita.get_by_text("Approved and released for delivery.").wait_for()
    await _shot(rita, shots / "approved.png")

    # The message reaches the upstream (notices to the sender travel the same way).
    for _ in range(200):
        if any(rcpt in r.rcpt_tos for r in sink.got):
            break
        await asyncio.sleep(0.05)
    assert any(rcpt in r.rcpt_tos and NHS.encode() in r.raw for r in sink.got)

    # The admin's audit view lists every step for this message, and the chain is intact.
    ada = await _login(browser, base, "ada")
    await ada.goto(f"{base}/audit?object={held.id}")
    text = await ada.locator("main").inner_text()
    for step in ("held", "viewed", "unmasked", "approved", "delivered"):
        assert step in text, step
    assert "Chain intact" in text
    await _shot(ada, shots / "audit.png")
    await ada.goto(f"{base}/history")
    assert held.id in await ada.content()
    await _shot(ada, shots / "history.png")

    if store_url.startswith("sqlite"):
        assert (await _cli(store_url, "audit", "verify")).returncode == 0
        await asyncio.to_thread(_tamper, store_url.removeprefix("sqlite:///"))
        broken = await _cli(store_url, "audit", "verify")
        assert broken.returncode == 1
        assert "broken at entry" in broken.stderr
