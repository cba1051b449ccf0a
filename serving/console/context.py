"""The console's state and the helpers every page uses: who is signed in, forms, rendering, the kill banner."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session, col, select

from lifecycle.registry import Registry
from lifecycle.registry.tables import Deployment, RegisteredModel
from serving.console.session import COOKIE, VIEWER, CsrfError, Operator, Sessions, check_origin
from serving.console.sources import ConsoleSources
from serving.guards.keys import KeyInfo, require_scope
from serving.settings import ServingSettings

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True)
class KilledModel:
    """A model whose kill switch is engaged in one environment (the red banner)."""

    model: str
    environment: str
    reason: str


@dataclass
class Console:
    """What the console's handlers share, fixed when the console app is built."""

    registry: Registry
    settings: ServingSettings
    sources: ConsoleSources
    sessions: Sessions
    clock: Callable[[], float] = time.time
    templates: Jinja2Templates = field(default_factory=lambda: Jinja2Templates(directory=str(TEMPLATES)))

    def operator(self, request: Request, scope: str = VIEWER) -> Operator:
        """The signed-in operator of ``request``, whose key allows ``scope``.

        Raises
        ------
        ConsoleAuthError
            No valid session: the handler sends the browser to the sign-in page.
        ScopeError
            Signed in, but the key's scope does not allow ``scope`` (HTTP 403).
        """
        operator = self.sessions.check(request.cookies.get(COOKIE), self.clock())
        require_scope(KeyInfo(operator.key_id, operator.scope, operator.name, False, _EPOCH), scope)
        return operator

    async def form(self, request: Request, operator: Operator) -> dict[str, str]:
        """The submitted form of a state-changing request, after the origin and CSRF checks.

        Raises
        ------
        CsrfError
            Another origin, or a missing or wrong CSRF token.
        """
        check_origin(request.headers.get("origin"), request.headers.get("referer"), own_origin(request))
        fields = await read_form(request)
        self.sessions.check_csrf(operator, fields.get("csrf_token"))
        return fields

    def killed(self) -> list[KilledModel]:
        """Every model killed now, in any environment (read on each page: replicas change it too)."""
        with Session(self.registry.engine) as session:
            rows = session.exec(select(Deployment, RegisteredModel)
                                .where(Deployment.model_id == RegisteredModel.id)
                                .where(col(Deployment.killed).is_(True))).all()
        return [KilledModel(model.name, dep.environment, dep.kill_reason or "") for dep, model in rows]

    def render(self, request: Request, template: str, operator: Operator | None, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        """``template`` with what every page shows: navigation, the signed-in operator, the kill banner."""
        base = str(request.scope.get("root_path", "")).rstrip("/")
        context.update(request=request, base=base, operator=operator,
                       csrf=self.sessions.csrf_token(operator) if operator else "",
                       killed=self.killed() if operator else [], available=self.sources)
        return self.templates.TemplateResponse(request, template, context, status_code=status_code)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def own_origin(request: Request) -> str:
    """``scheme://host[:port]`` of this server as the browser addressed it (the Host header)."""
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as one value per field (the last one wins).

    Parsed here with :func:`urllib.parse.parse_qs`, bounded to 64 KiB: the
    console's forms are small, and this keeps ``python-multipart`` out.

    Raises
    ------
    CsrfError
        Another content type (a cross-site form can only send this one, or
        multipart, or text/plain; only the first is accepted) or too large a body.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise CsrfError(f"a console form must be application/x-www-form-urlencoded, not {kind[:60] or 'empty'}")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise CsrfError("console form too large")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def console_of(request: Request) -> Console:
    """The :class:`Console` of the app serving ``request``."""
    console = request.app.state.console
    assert isinstance(console, Console)
    return console
