"""Sites: enrolled sites with certificate expiry, last seen and revocation (enrol, rotate, revoke in actions)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from serving.console.context import console_of
from serving.console.sources import SiteView

router = APIRouter()
SOON_DAYS = 30


@router.get("/sites", response_class=HTMLResponse)
async def sites_page(request: Request) -> Response:
    """Enrolled sites: certificate expiry, last seen, revocation, and the enrolment forms."""
    console = console_of(request)
    operator = console.operator(request)
    source = console.sources.sites
    found: list[SiteView] = await run_in_threadpool(source.sites) if source is not None else []
    now = datetime.fromtimestamp(console.clock(), UTC)
    rows = [{"site": s, "days_left": (s.not_after - now).days} for s in found]
    return console.render(request, "sites.html", operator, rows=rows, soon=SOON_DAYS, unavailable=source is None,
                          title="Sites")
