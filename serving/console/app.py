"""The console app: sign-in, the pages, the actions, mounted at ``/console`` of the serving app.

:func:`create_console_app` builds a FastAPI sub-application (its own error
pages, no OpenAPI schema) over :class:`~serving.console.context.Console`;
:func:`mount_console` mounts it on the serving app, and ``fedguard console``
serves it alone for a coordinator that serves no model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from lifecycle import audit
from lifecycle.errors import FedguardError
from lifecycle.registry import Registry
from serving import logger
from serving.console import actions, audit_page, models, privacy, runs, sites
from serving.console.context import STATIC, Console, own_origin, read_form
from serving.console.session import COOKIE, VIEWER, ConsoleAuthError, CsrfError, Operator, Sessions, check_origin
from serving.console.sources import ConsoleSources
from serving.guards.keys import AuthenticationError, ScopeError, authenticate, require_scope
from serving.settings import ServingSettings

STATUS = {2: 400, 3: 409, 4: 404, 5: 409, 7: 403, 8: 409, 11: 409}
"""HTTP status of a refused action by the CLI exit code of its error (docs/cli.md)."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_console_app(registry: Registry, settings: ServingSettings, sources: ConsoleSources, *,
                       clock: Callable[[], float] = time.time) -> FastAPI:
    """The console as an app of its own (mount it, or serve it alone)."""
    secret = settings.console_secret.get_secret_value().encode() if settings.console_secret else None
    console = Console(registry, settings, sources, Sessions(registry, secret, settings.console_session_minutes * 60),
                      clock)
    app = FastAPI(title="fedguard console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[..., object]) -> Response:
        response: Response = await call_next(request)  # type: ignore[misc]
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(ConsoleAuthError)
    async def sign_in_first(request: Request, exc: Exception) -> Response:
        logger.info("console: %s (%s %s)", exc, request.method, request.url.path)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        target = f"{base}/signin?next={quote(request.url.path)}"
        if request.method == "GET" and "hx-request" not in request.headers:
            return RedirectResponse(target, status_code=303)
        response = console.render(request, "message.html", None, 401, title="Sign in first",
                                  message="Your session has ended or you have not signed in.", link=target)
        response.headers["HX-Redirect"] = target
        return response

    @app.exception_handler(ScopeError)
    async def forbidden(request: Request, exc: Exception) -> Response:
        logger.warning("console refused %s %s: %s", request.method, request.url.path, exc)
        return console.render(request, "message.html", None, 403, title="Not allowed",
                              message="This key may not do that: the console needs a 'viewer' key to read and an "
                                      "'admin' key to change anything.")

    @app.exception_handler(CsrfError)
    async def csrf(request: Request, exc: Exception) -> Response:
        logger.warning("console refused %s %s: %s", request.method, request.url.path, exc)
        return console.render(request, "message.html", None, 403, title="Request refused", message=str(exc))

    @app.exception_handler(FedguardError)
    async def refused(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "exit_code", 1)
        logger.warning("console action refused (%s %s): %s", request.method, request.url.path, exc)
        operator = _maybe(console, request)
        return console.render(request, "message.html", operator, STATUS.get(code, 500), title="Refused",
                              message=f"error: {exc}", refused=True)

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/runs", status_code=303)

    @app.get("/signin", response_class=HTMLResponse)
    async def signin_page(request: Request, next: str = "") -> Response:
        return console.render(request, "signin.html", None, next=_safe_next(next), error="")

    @app.post("/signin")
    async def signin(request: Request) -> Response:
        check_origin(request.headers.get("origin"), request.headers.get("referer"), own_origin(request))
        fields = await read_form(request)
        next_path = _safe_next(fields.get("next", ""))
        try:
            info = await run_in_threadpool(authenticate, registry, fields.get("api_key", "").strip())
            require_scope(info, VIEWER)
        except AuthenticationError as exc:
            logger.warning("console sign-in refused: %s", exc)
            return console.render(request, "signin.html", None, 401, next=next_path,
                                  error="That key was not accepted: check it, or ask for a new one.")
        except ScopeError as exc:
            logger.warning("console sign-in refused: %s", exc)
            return console.render(request, "signin.html", None, 403, next=next_path,
                                  error="That key may not open the console: use a 'viewer' or 'admin' key.")
        with registry.transaction() as session:
            audit.record(session, "console.signin", actor=f"apikey:{info.key_id}", subject=info.key_id,
                         details={"scope": info.scope})
        base = str(request.scope.get("root_path", "")).rstrip("/")
        response = RedirectResponse(next_path or f"{base}/runs", status_code=303)
        response.set_cookie(COOKIE, console.sessions.issue(info.key_id, info.name, info.scope, clock()),
                            max_age=settings.console_session_minutes * 60, path=base or "/", httponly=True,
                            secure=request.url.scheme == "https" or settings.tls, samesite="strict")
        return response

    @app.post("/signout")
    async def signout(request: Request) -> Response:
        operator = console.operator(request)
        await console.form(request, operator)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        response = RedirectResponse(f"{base}/signin", status_code=303)
        response.delete_cookie(COOKIE, path=base or "/")
        return response

    for module in (runs, privacy, models, audit_page, sites, actions):
        app.include_router(module.router)
    return app


def _maybe(console: Console, request: Request) -> Operator | None:
    try:
        return console.operator(request)
    except FedguardError:
        return None


def _safe_next(path: str) -> str:
    """A ``next`` target only if it is a path on this console (no open redirect)."""
    return path if path.startswith("/console/") and "//" not in path and "\\" not in path else ""


def mount_console(app: FastAPI, registry: Registry, settings: ServingSettings, sources: ConsoleSources, *,
                  clock: Callable[[], float] = time.time) -> None:
    """Serve the console under ``/console`` of ``app``."""
    app.mount("/console", create_console_app(registry, settings, sources, clock=clock), name="console")
