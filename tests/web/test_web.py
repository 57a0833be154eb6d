"""The review web UI over HTTP: login, roles, CSRF, four eyes, masking, escaping, headers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from browsing import csrf_for, csrf_of, login
from seeding import NHS, hold, notices, raw_message

from relayguard import audit, notify
from relayguard.config import Settings
from relayguard.store import State, Store
from relayguard.web import create_app

Browser = Callable[[], httpx.AsyncClient]


async def _as(client: Browser, name: str) -> httpx.AsyncClient:
    c = client()
    response = await login(c, name)
    assert response.status_code == 303, response.text
    return c


async def test_anonymous_is_sent_to_login_everywhere(client: Browser, store: Store) -> None:
    """Every page and every action redirects an anonymous visitor to the login page."""
    qid = await hold(store)
    c = client()
    for path in ("/", "/held", "/history", "/audit", f"/messages/{qid}"):
        r = await c.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")
    for action in ("approve", "reject", "unmask", "request-release"):
        r = await c.post(f"/messages/{qid}/{action}", data={"reason": "x"})
        assert r.headers["location"].startswith("/login"), action
    assert (await store.get(qid, with_raw=False)).state is State.HELD


async def test_security_headers_everywhere(client: Browser) -> None:
    """The login page, a stylesheet and a 404 all carry CSP, frame, referrer and nosniff headers."""
    c = client()
    for path in ("/login", "/static/style.css", "/no-such-page"):
        r = await c.get(path)
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-content-type-options"] == "nosniff"


async def test_session_rotated_at_login(client: Browser) -> None:
    """The session id planted before login is not the one after it, and is worthless afterwards."""
    c = client()
    await c.get("/login")
    before = c.cookies["rg_session"]
    await login(c, "rita")
    after = c.cookies["rg_session"]
    assert after != before
    attacker = client()
    attacker.cookies.set("rg_session", before)
    assert (await attacker.get("/held")).status_code == 303
    assert (await c.get("/held")).status_code == 200


async def test_cookie_flags(client: Browser, settings: Settings, store: Store) -> None:
    """The session cookie is HttpOnly and SameSite=Strict, and Secure when served over https."""
    r = await login(client(), "rita")
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "secure" not in cookie
    tls = settings.model_copy(update={"web": settings.web.model_copy(update={"base_url": "https://rg.example"})})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(tls, store)),
                                 base_url="http://testserver") as c:
        assert "secure" in (await c.get("/login")).headers["set-cookie"].lower()


async def test_post_without_csrf_is_forbidden(client: Browser, store: Store) -> None:
    """A logged-in reviewer's approve without, or with a wrong, CSRF token gets 403 and changes nothing."""
    qid = await hold(store)
    c = await _as(client, "rita")
    assert (await c.post(f"/messages/{qid}/approve")).status_code == 403
    assert (await c.post(f"/messages/{qid}/approve", data={"csrf": "forged"})).status_code == 403
    assert (await store.get(qid, with_raw=False)).state is State.HELD
    fresh = client()
    assert (await fresh.post("/login", data={"username": "rita", "password": "x"})).status_code == 403


async def test_sender_sees_only_own_mail(client: Browser, store: Store) -> None:
    """A sender lists only their own held mail, gets 403 on another's, and cannot approve their own."""
    mine = await hold(store, subject="Alice's referral")
    theirs = await hold(store, submitter="bob", mail_from="bob@practice.nhs.uk", subject="Bob's list")
    c = await _as(client, "alice")
    listing = (await c.get("/held")).text
    assert mine in listing
    assert theirs not in listing
    assert (await c.get(f"/messages/{theirs}")).status_code == 403
    own = await c.get(f"/messages/{mine}")
    assert own.status_code == 200
    assert "/approve" not in own.text
    assert "Request release" in own.text
    r = await c.post(f"/messages/{mine}/approve", data={"csrf": csrf_of(own.text)})
    assert r.status_code == 403
    assert (await store.get(mine, with_raw=False)).state is State.HELD


async def test_identifiers_masked_and_unmask_audited(client: Browser, store: Store) -> None:
    """The review page masks identifiers; unmasking needs a typed reason and is audited, as is each view."""
    qid = await hold(store, raw=raw_message(attachment=("list.csv", f"name,nhs\nX,{NHS}\n")))
    c = await _as(client, "rita")
    page = await c.get(f"/messages/{qid}")
    assert NHS not in page.text
    assert NHS.replace(" ", "") not in page.text
    assert "list.csv" in page.text
    assert (await c.post(f"/messages/{qid}/unmask", data={"csrf": csrf_of(page.text),
                                                           "reason": " "})).status_code == 400
    shown = await c.post(f"/messages/{qid}/unmask", data={"csrf": csrf_of(page.text),
                                                           "reason": "checking the right patient"})
    assert shown.status_code == 200
    assert NHS in shown.text
    actions = [(e.action, e.actor) for e in await audit.entries(store, obj=qid)]
    assert actions == [("viewed", "rita"), ("unmasked", "rita")]
    (unmasked,) = await audit.entries(store, obj=qid, action="unmasked")
    assert unmasked.details == {"reason": "checking the right patient"}


async def test_sender_cannot_unmask(client: Browser, store: Store) -> None:
    """Unmasking is for reviewers only, even on the sender's own message."""
    qid = await hold(store)
    c = await _as(client, "alice")
    r = await c.post(f"/messages/{qid}/unmask", data={"csrf": await csrf_for(c), "reason": "mine"})
    assert r.status_code == 403
    assert NHS not in r.text


async def test_two_approvals_over_http(client: Browser, store: Store) -> None:
    """With 2 approvals needed, the first keeps it held, a repeat is refused, a second reviewer releases."""
    qid = await hold(store, approvals=2)
    rita, rob = await _as(client, "rita"), await _as(client, "rob")
    r = await rita.post(f"/messages/{qid}/approve", data={"csrf": await csrf_for(rita)})
    assert r.status_code == 303
    assert (await store.get(qid, with_raw=False)).state is State.HELD
    again = await rita.post(f"/messages/{qid}/approve", data={"csrf": await csrf_for(rita)})
    assert again.status_code == 403
    assert "already approved" in again.text
    r = await rob.post(f"/messages/{qid}/approve", data={"csrf": await csrf_for(rob)})
    assert r.headers["location"].endswith("done=released")
    assert (await store.get(qid, with_raw=False)).state is State.QUEUED


async def test_concurrent_approve_and_reject_over_http(client: Browser, store: Store) -> None:
    """Approve and reject racing over HTTP: one gets 303, the other 409; the state matches the winner."""
    rita, rob = await _as(client, "rita"), await _as(client, "rob")
    for _ in range(3):
        qid = await hold(store)
        a, b = await csrf_for(rita), await csrf_for(rob)
        r1, r2 = await asyncio.gather(
            rita.post(f"/messages/{qid}/approve", data={"csrf": a}),
            rob.post(f"/messages/{qid}/reject", data={"csrf": b, "reason": "race"}))
        assert sorted([r1.status_code, r2.status_code]) == [303, 409]
        state = (await store.get(qid, with_raw=False)).state
        assert state is (State.QUEUED if r1.status_code == 303 else State.REJECTED)


async def test_user_content_is_escaped(client: Browser, store: Store) -> None:
    """A hostile subject, attachment name and body are shown as text, never as markup."""
    evil = "<script>alert(1)</script>"
    raw = raw_message(subject=evil, body=f"hello {evil}",
                      attachment=('"><img src=x onerror=alert(2)>.csv', "a,b\n"))
    qid = await hold(store, raw=raw, subject=evil)
    c = await _as(client, "rita")
    for page in ((await c.get("/held")).text, (await c.get(f"/messages/{qid}")).text):
        assert evil not in page
        assert "<img src=x" not in page
        assert "&lt;script&gt;" in page


async def test_login_throttled_per_ip(client: Browser, store: Store) -> None:
    """After 10 failures from one address even the right password is refused (429); failures are audited."""
    c = client()
    names = ["rob", "ada", "bob", "nobody"]
    for i in range(10):
        page = await c.get("/login")
        r = await c.post("/login", data={"csrf": csrf_of(page.text), "username": names[i % 4],
                                         "password": "wrong password"})
        assert r.status_code == 401
    assert (await login(c, "rita")).status_code == 429
    failed = await audit.entries(store, action="login_failed")
    assert len(failed) == 10
    assert failed[0].details["client"] and failed[0].details["via"] == "web"


async def test_audit_page_for_admins_only(client: Browser, store: Store) -> None:
    """Reviewers get 403 on the audit view; admins see the entries and the chain status."""
    qid = await hold(store)
    rita = await _as(client, "rita")
    await rita.get(f"/messages/{qid}")
    assert (await rita.get("/audit")).status_code == 403
    ada = await _as(client, "ada")
    page = await ada.get("/audit")
    assert page.status_code == 200
    assert "Chain intact" in page.text
    assert qid in page.text
    assert "viewed" in page.text


async def test_notice_link_needs_login(client: Browser, store: Store, settings: Settings) -> None:
    """A signed link leads to the message page (still behind login); a forged one is refused."""
    qid = await hold(store)
    token = notify.review_link(settings, qid).rsplit("/", 1)[1]
    c = client()
    page = await c.get(f"/go/{token}")
    assert page.status_code == 200
    assert f'href="/messages/{qid}"' in page.text
    assert (await c.get(f"/messages/{qid}")).status_code == 303
    assert (await c.get(f"/go/{token}x")).status_code == 400


async def test_reject_request_release_and_history(client: Browser, store: Store) -> None:
    """A sender's release request reaches the reviewers; a rejection then shows in the history."""
    qid = await hold(store)
    alice = await _as(client, "alice")
    r = await alice.post(f"/messages/{qid}/request-release",
                         data={"csrf": await csrf_for(alice), "justification": "Patient asked"})
    assert r.status_code == 303
    assert [rc for rc, _ in await notices(store)] == [("reviewers@practice.nhs.uk",)]
    rita = await _as(client, "rita")
    r = await rita.post(f"/messages/{qid}/reject", data={"csrf": await csrf_for(rita), "reason": ""})
    assert r.status_code == 400
    r = await rita.post(f"/messages/{qid}/reject", data={"csrf": await csrf_for(rita), "reason": "No"})
    assert r.status_code == 303
    history = (await alice.get("/history")).text
    assert qid in history
    assert "rejected" in history


@pytest.mark.parametrize("path", ["/logout"])
async def test_logout_ends_session(client: Browser, path: str) -> None:
    """Logging out ends the session on the server: the old cookie no longer opens pages."""
    c = await _as(client, "rita")
    sid = c.cookies["rg_session"]
    assert (await c.post(path, data={"csrf": await csrf_for(c)})).status_code == 303
    replay = client()
    replay.cookies.set("rg_session", sid)
    assert (await replay.get("/held")).status_code == 303
