"""Audit: the chain's verification status and last signed checkpoint, a searchable event list, the walk-back report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, col, or_, select
from starlette.concurrency import run_in_threadpool

from lifecycle.audit.report import complete, export
from lifecycle.audit.trace import gather, parse_instant
from lifecycle.errors import ConfigurationError, FedguardError
from lifecycle.registry import Registry
from lifecycle.registry.tables import AuditEvent
from serving.console.context import console_of

router = APIRouter()
PAGE = 100


@dataclass(frozen=True)
class ChainStatus:
    """What ``fedguard audit verify`` says, or why it failed (verification raises; the page shows the reason)."""

    ok: bool
    events: int
    checkpoints: int
    last_checkpoint: dict[str, Any] | None
    key: str
    problem: str


def chain_status(registry: Registry) -> ChainStatus:
    """Verify the chain and the checkpoints with the registry's own audit public key, as the CLI does by default."""
    try:
        result = registry.verify_audit()
    except FedguardError as exc:
        return ChainStatus(False, 0, 0, None, "", str(exc))
    return ChainStatus(True, result.events, result.checkpoints, result.last_checkpoint, result.key, "")


def search(registry: Registry, query: str, action: str, before: int | None) -> list[AuditEvent]:
    """The newest :data:`PAGE` events matching ``query`` (actor, subject or details) and ``action`` (a prefix)."""
    statement = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(PAGE)
    if query:
        like = f"%{query}%"
        statement = statement.where(or_(col(AuditEvent.actor).like(like), col(AuditEvent.subject).like(like),
                                        col(AuditEvent.details_json).like(like), col(AuditEvent.action).like(like)))
    if action:
        statement = statement.where(col(AuditEvent.action).startswith(action))
    if before is not None:
        statement = statement.where(col(AuditEvent.id) < before)
    with Session(registry.engine) as session:
        return list(session.exec(statement).all())


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, q: str = "", action: str = "", before: int | None = None) -> Response:
    """The chain's status, the report form and the newest events matching the search."""
    console = console_of(request)
    operator = console.operator(request)
    status = await run_in_threadpool(chain_status, console.registry)
    events = await run_in_threadpool(search, console.registry, q[:200], action[:64], before)
    rows = [{"event": e, "details": json.loads(e.details_json or "{}")} for e in events]
    models = [r.name for r in await run_in_threadpool(console.registry.latest_versions)]
    return console.render(request, "audit.html", operator, status=status, rows=rows, q=q, action=action,
                          models=models, page=PAGE, title="Audit")


@router.get("/audit/report")
async def audit_report(request: Request, model: str, env: str = "", at: str = "", version: str = "",
                       format: str = "html") -> Response:
    """The walk-back report (``fedguard audit trace``) as a download; its SHA-256 goes into the audit trail."""
    console = console_of(request)
    operator = console.operator(request)
    if format not in ("html", "json"):
        raise ConfigurationError("the report format is 'html' or 'json'")
    moment = parse_instant(at) if at.strip() else None
    number = int(version) if version.strip().isdigit() else None

    def build() -> tuple[bytes, str]:
        report = complete(gather(console.registry, model, environment=env or None, at=moment, version=number))
        return export(console.registry, report, format, None, actor=operator.actor)

    content, digest = await run_in_threadpool(build)
    filename = f"fedguard-trace-{model}{'-v' + str(number) if number else ''}.{format}"
    return Response(content, media_type="text/html" if format == "html" else "application/json",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Report-SHA256": digest})
