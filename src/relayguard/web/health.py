"""``/metrics``, ``/healthz`` and ``/readyz`` on the web listener, for monitoring (no login).

They name no message, submitter or person: counts, ages and up/down only, so an unauthenticated
scraper learns nothing about the mail. ``install`` is called by the relay after ``create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from relayguard.config import Settings
from relayguard.metrics import CONTENT_TYPE, Metrics
from relayguard.store import Store

router = APIRouter()
UPSTREAM_TIMEOUT = 3.0  # seconds; a probe must answer well inside a load balancer's own timeout


@dataclass(frozen=True, slots=True)
class Ops:
    settings: Settings
    store: Store
    metrics: Metrics


def install(app: FastAPI, *, settings: Settings, store: Store, metrics: Metrics) -> None:
    """Mount the health routes on ``app``, reading from this relay's store and metrics."""
    app.state.ops = Ops(settings, store, metrics)
    app.include_router(router)


def _ops(request: Request) -> Ops:
    ops: Ops = request.app.state.ops
    return ops


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    ops = _ops(request)
    return Response(await ops.metrics.render(ops.store), media_type=CONTENT_TYPE)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers: nothing else is checked (that is /readyz)."""
    return {"status": "ok"}


async def store_status(store: Store) -> str:
    try:
        await asyncio.wait_for(store.ping(), UPSTREAM_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported by type only
        return f"unavailable: {type(exc).__name__}"
    return "ok"


async def upstream_status(settings: Settings) -> str:
    """A TCP connect to the upstream; the capture mailbox (dev mode) is always reachable."""
    if settings.capture_mode or settings.upstream.host is None:
        return "ok (capture mailbox)"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.upstream.host, settings.upstream.port), UPSTREAM_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return f"unreachable: {type(exc).__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "ok"


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the store answers and the upstream accepts a TCP connection, else 503 saying which."""
    ops = _ops(request)
    store, upstream = await asyncio.gather(store_status(ops.store), upstream_status(ops.settings))
    ready = store == "ok" and upstream.startswith("ok")
    return JSONResponse({"ready": ready, "store": store, "upstream": upstream},
                        status_code=200 if ready else 503)
