"""The review web UI: login, held mail, one message, approve / reject / request release, history, audit.

Server-rendered (Jinja2, autoescaped), plain CSS, no JavaScript. Every page needs a login; every
form carries the session's CSRF token; every look at held content is an audit entry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from relayguard import audit, notify, quarantine
from relayguard.auth import Role, authenticate
from relayguard.config import Settings
from relayguard.decision import Action
from relayguard.errors import AuthError, ConflictError, NotFound, PermissionDenied, RelayguardError
from relayguard.store import State, Store, StoredMessage, User
from relayguard.web import content
from relayguard.web.security import COOKIE, Session, Sessions, Throttle, csrf_ok

_HERE = Path(__file__).parent
SECURITY_HEADERS = {
    # No inline script or style anywhere: the pages need none, so an injected one cannot run.
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; object-src 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",  # held mail must not linger in a shared PC's browser cache
}
HISTORY_STATES = [State.QUEUED, State.DELIVERED, State.BOUNCED, State.REJECTED, State.EXPIRED]
DONE = {"approved": "Approval recorded.", "released": "Approved and released for delivery.",
        "rejected": "Message rejected; the sender has been told.",
        "requested": "Release requested; the reviewers have been told."}


class LoginRequired(Exception):  # noqa: N818 - a control-flow signal, caught by a handler below
    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(slots=True)
class Web:
    settings: Settings
    store: Store
    sessions: Sessions
    throttle: Throttle
    templates: Jinja2Templates

    def secure(self, request: Request) -> bool:
        base = self.settings.web.base_url or ""
        return base.startswith("https:") or request.url.scheme == "https"


@dataclass(frozen=True, slots=True)
class Viewer:
    user: User
    session: Session

    @property
    def role(self) -> Role:
        try:
            return Role(self.user.role)
        except ValueError:
            return Role.SENDER  # an unknown role gets the least

    @property
    def reviewer(self) -> bool:
        return self.role.at_least(Role.REVIEWER)


# -- plumbing --------------------------------------------------------------------------------

def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def session_of(request: Request) -> Session | None:
    return web_of(request).sessions.get(request.cookies.get(COOKIE))


async def viewer(request: Request) -> Viewer:
    """The logged-in user, or a redirect to the login page (raised, so no page forgets it)."""
    session = session_of(request)
    user = await web_of(request).store.get_user(session.user) if session and session.user else None
    if session is None or user is None:
        raise LoginRequired(request.url.path)
    return Viewer(user=user, session=session)


async def checked_form(request: Request) -> FormData:
    """The POSTed form, only if it carries this session's CSRF token; else 403."""
    form = await request.form()
    if not csrf_ok(session_of(request), form.get("csrf")):
        raise PermissionDenied("the form has expired or did not come from this site; reload and retry")
    return form


ViewerDep = Annotated[Viewer, Depends(viewer)]
FormDep = Annotated[FormData, Depends(checked_form)]


def render(request: Request, name: str, ctx: dict[str, Any], *, status: int = 200,
           session: Session | None = None) -> Response:
    web = web_of(request)
    session = session or session_of(request)
    ctx = {"csrf": session.csrf if session else "", "now": web.store.clock.now(), **ctx}
    return web.templates.TemplateResponse(request, name, ctx, status_code=status)


def set_session_cookie(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(COOKIE, session.sid, httponly=True, samesite="strict", path="/",
                        secure=web_of(request).secure(request))


def safe_next(value: object) -> str:
    """Only a local path: ``//evil.example`` and ``https://…`` would be open redirects."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/held"


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def visible_message(v: Viewer, store: Store, queue_id: str) -> StoredMessage:
    """The message if ``v`` may see it: reviewers any client message, senders only their own."""
    message = await store.get(queue_id)
    if message.origin != "client":
        raise NotFound(f"no message {queue_id}")
    if not v.reviewer and not quarantine.is_own(v.user, message):
        raise PermissionDenied("this message is not yours")
    return message


def age(now: float, then: float) -> str:
    hours = (now - then) / 3600
    if hours < 1:
        return f"{max(0, round(hours * 60))} min"
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} d"


def reasons(message: StoredMessage) -> str:
    kinds: dict[str, int] = {}
    for f in message.decision.findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + f.count
    found = ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items()))
    return "; ".join(x for x in (", ".join(message.decision.rules), found) if x) or "policy"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


# -- login -----------------------------------------------------------------------------------

router = APIRouter()


@router.get("/login")
async def login_page(request: Request) -> Response:
    session = session_of(request) or web_of(request).sessions.new()
    response = render(request, "login.html", {"next": safe_next(request.query_params.get("next")),
                                              "error": None}, session=session)
    set_session_cookie(request, response, session)
    return response


@router.post("/login")
async def login(request: Request, form: FormDep) -> Response:
    web = web_of(request)
    ip = request.client.host if request.client else "unknown"
    name, next_path = field(form, "username").strip()[:128], safe_next(form.get("next"))
    if web.throttle.blocked(ip):
        return render(request, "login.html", {"next": next_path, "error":
                      "Too many failed logins from this address; wait 15 minutes."}, status=429)
    try:
        user = await authenticate(web.store, name, field(form, "password"), via="web", client=ip)
    except AuthError:  # audited by authenticate()
        web.throttle.fail(ip)
        return render(request, "login.html", {"next": next_path, "error":
                      "Wrong name or password, or the account is locked."}, status=401)
    session = web.sessions.rotate(session_of(request), user=user.name, role=user.role)
    async with web.store.begin() as conn:
        await audit.append(conn, at=web.store.clock.now(), actor=user.name, action=audit.AuditAction.LOGIN,
                           obj=f"user:{user.name}", details={"ip": ip})
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, session)
    return response


@router.post("/logout")
async def logout(request: Request, _: FormDep) -> Response:
    web_of(request).sessions.end(session_of(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- pages -----------------------------------------------------------------------------------

@router.get("/")
async def home(_: ViewerDep) -> Response:
    return RedirectResponse("/held", status_code=303)


def _matches(message: StoredMessage, sender: str, rule: str) -> bool:
    who = f"{message.submitter.name} {message.envelope.mail_from}".casefold()
    return (not sender or sender.casefold() in who) and (not rule or rule in message.decision.rules)


async def _mine(v: Viewer, store: Store, states: list[State]) -> list[StoredMessage]:
    messages = await store.list_messages(states=states, origin="client", limit=1000)
    return [m for m in messages if v.reviewer or quarantine.is_own(v.user, m)]


@router.get("/held")
async def held(request: Request, v: ViewerDep) -> Response:
    sender = request.query_params.get("sender", "").strip()
    rule = request.query_params.get("rule", "").strip()
    messages = await _mine(v, web_of(request).store, [State.HELD])
    rules = sorted({r for m in messages for r in m.decision.rules})
    shown = [m for m in messages if _matches(m, sender, rule)]
    return render(request, "held.html", {"v": v, "messages": shown, "rules": rules, "sender": sender,
                                         "rule": rule, "age": age, "reasons": reasons})


@router.get("/history")
async def history(request: Request, v: ViewerDep) -> Response:
    messages = [m for m in await _mine(v, web_of(request).store, HISTORY_STATES)
                if m.decision.action is Action.HOLD]
    return render(request, "history.html", {"v": v, "messages": messages, "when": when,
                                            "reasons": reasons})


async def _message_page(request: Request, v: Viewer, queue_id: str, *, unmask_reason: str | None) -> Response:
    web = web_of(request)
    message = await visible_message(v, web.store, queue_id)
    unmasked = unmask_reason is not None
    async with web.store.begin() as conn:
        await audit.append(conn, at=web.store.clock.now(), actor=v.user.name,
                           action=audit.AuditAction.UNMASKED if unmasked else audit.AuditAction.VIEWED,
                           obj=queue_id, details={"reason": unmask_reason} if unmasked else {})
    approvers = await quarantine.approvals(web.store, queue_id)
    can_review = (v.reviewer and message.state is State.HELD and not quarantine.is_own(v.user, message))
    return render(request, "message.html", {
        "v": v, "m": message, "c": content.extract(message.raw, unmasked=unmasked), "unmasked": unmasked,
        "approvers": approvers, "can_review": can_review, "reasons": reasons, "when": when,
        "own": quarantine.is_own(v.user, message), "done": DONE.get(request.query_params.get("done", "")),
        "history": await audit.entries(web.store, obj=queue_id)})


@router.get("/messages/{queue_id}")
async def message_page(request: Request, queue_id: str, v: ViewerDep) -> Response:
    return await _message_page(request, v, queue_id, unmask_reason=None)


@router.post("/messages/{queue_id}/unmask")
async def unmask(request: Request, queue_id: str, v: ViewerDep, form: FormDep) -> Response:
    if not v.reviewer:
        raise PermissionDenied("only reviewers may see identifiers unmasked")
    reason = field(form, "reason").strip()
    if not reason:
        raise ValueError("type why you need to see the identifiers")
    return await _message_page(request, v, queue_id, unmask_reason=reason[:500])


def _back(queue_id: str, done: str) -> Response:
    return RedirectResponse(f"/messages/{quote(queue_id)}?done={done}", status_code=303)


@router.post("/messages/{queue_id}/approve")
async def approve(request: Request, queue_id: str, v: ViewerDep, _: FormDep) -> Response:
    web = web_of(request)
    result = await quarantine.approve(web.store, web.settings, queue_id, v.user, via="web")
    return _back(queue_id, "released" if result.state is State.QUEUED else "approved")


@router.post("/messages/{queue_id}/reject")
async def reject(request: Request, queue_id: str, v: ViewerDep, form: FormDep) -> Response:
    web = web_of(request)
    await quarantine.reject(web.store, web.settings, queue_id, v.user, reason=field(form, "reason"))
    return _back(queue_id, "rejected")


@router.post("/messages/{queue_id}/request-release")
async def request_release(request: Request, queue_id: str, v: ViewerDep, form: FormDep) -> Response:
    web = web_of(request)
    await quarantine.request_release(web.store, web.settings, queue_id, v.user,
                                     justification=field(form, "justification"))
    return _back(queue_id, "requested")


@router.get("/audit")
async def audit_page(request: Request, v: ViewerDep) -> Response:
    if v.role is not Role.ADMIN:
        raise PermissionDenied("the audit trail is for admins")
    store = web_of(request).store
    obj = request.query_params.get("object", "").strip() or None
    entries = await audit.entries(store, obj=obj, limit=500, newest_first=True)
    ok, bad_seq, summary = await audit.verify(store)
    return render(request, "audit.html", {"v": v, "entries": entries, "object": obj or "", "ok": ok,
                                          "bad_seq": bad_seq, "summary": summary, "when": when})


@router.get("/go/{token}")
async def go(request: Request, token: str) -> Response:
    """The link from a notice. It only names a message: the page behind it still needs a login.

    A same-site link rather than a redirect: the session cookie is SameSite=Strict, so it is not
    sent on the navigation that starts in the mail client, but it is on a click from here.
    """
    queue_id = notify.check_link(web_of(request).settings, token)
    if queue_id is None:
        return render(request, "error.html", {"v": None, "title": "Link expired",
                      "message": "This link is invalid or has expired. Log in to find the message."},
                      status=400)
    return render(request, "go.html", {"v": None, "target": f"/messages/{quote(queue_id)}",
                                       "queue_id": queue_id})


# -- the app ---------------------------------------------------------------------------------

def _error_handler(status: int, title: str) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", {"v": None, "title": title, "message": str(exc)},
                      status=status)
    return handle


async def _to_login(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)


def create_app(settings: Settings, store: Store) -> FastAPI:
    """The web UI over ``store``; serve it with uvicorn on ``settings.web.listen``."""
    app = FastAPI(title="relayguard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = Web(settings=settings, store=store,
                        sessions=Sessions(ttl=settings.web.session_hours * 3600), throttle=Throttle(),
                        templates=Jinja2Templates(directory=str(_HERE / "templates")))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                               ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(PermissionDenied, _error_handler(403, "Not allowed"))
    app.add_exception_handler(NotFound, _error_handler(404, "Not found"))
    app.add_exception_handler(ConflictError, _error_handler(409, "Already decided"))
    app.add_exception_handler(ValueError, _error_handler(400, "Missing information"))
    app.add_exception_handler(RelayguardError, _error_handler(503, "Try again"))
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    app.include_router(router)
    return app
