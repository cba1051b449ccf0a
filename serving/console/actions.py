"""Every state-changing form of the console: admin key, same origin, CSRF token, ticked confirmation, audited.

Each action calls the function its CLI command calls, with the operator's
key id as the actor (``apikey:<key_id>``, as the admin API routes write it),
so the audit trail, the refusals and their wording are the CLI's: a promotion
refused by its gates shows the same one-line message ``fedguard models
promote`` prints, naming each failing criterion with its measured value and
threshold. The kill switch writes the registry, which every serving replica
re-reads within ``deploy_refresh_seconds`` (0.25 s by default, at most 0.9 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.governance.consent import ConsentStore
from lifecycle.governance.stages import StageStore
from lifecycle.registry import DeploymentStore
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT, verify_version
from serving.console.context import Console, console_of
from serving.console.session import ADMIN, Operator

router = APIRouter()
ENROLMENT_ELSEWHERE = "enrolment happens on the coordinator: use the console that 'fedguard console' serves there"


async def _admin_form(request: Request) -> tuple[Console, Operator, dict[str, str]]:
    console = console_of(request)
    operator = console.operator(request, ADMIN)
    fields = await console.form(request, operator)
    if fields.get("confirm") != "yes":
        raise ConfigurationError("the action was not confirmed: tick the confirmation box and submit again")
    return console, operator, fields


def _int(fields: dict[str, str], name: str) -> int:
    text = fields.get(name, "").strip()
    if not text.isdigit() or not 0 < int(text) < 10**9:
        raise ConfigurationError(f"'{name}' must be a positive whole number, got {text[:20]!r}")
    return int(text)


def _env(fields: dict[str, str]) -> str:
    return fields.get("env", "").strip() or DEFAULT_ENVIRONMENT


async def _done(console: Console, request: Request, operator: Operator, message: str, back: str,
                work: Callable[[], Any]) -> Response:
    await run_in_threadpool(work)
    base = str(request.scope.get("root_path", "")).rstrip("/")
    return console.render(request, "message.html", operator, title="Done", message=message, link=base + back)


@router.post("/models/{name}/promote")
async def promote(request: Request, name: str) -> Response:
    """Promote a version to a stage in an environment (``fedguard models promote``), if its gates pass."""
    console, operator, fields = await _admin_form(request)
    version, env, stage = _int(fields, "version"), _env(fields), fields.get("to", "")
    return await _done(console, request, operator, f"promoted {name}:{version} to {stage} in '{env}'",
                       f"/models/{name}", lambda: StageStore(console.registry).promote(
                           name, version, to=stage, environment=env, actor=operator.actor))


@router.post("/models/{name}/demote")
async def demote(request: Request, name: str) -> Response:
    """Demote a version in an environment (``fedguard models demote``)."""
    console, operator, fields = await _admin_form(request)
    version, env = _int(fields, "version"), _env(fields)
    return await _done(console, request, operator, f"demoted {name}:{version} in '{env}'", f"/models/{name}",
                       lambda: StageStore(console.registry).demote(name, version, environment=env,
                                                                   actor=operator.actor,
                                                                   reason=fields.get("reason", "")))


@router.post("/models/{name}/canary")
async def canary(request: Request, name: str) -> Response:
    """Answer a sticky share of keys with a verified version (``fedguard deploy canary``)."""
    console, operator, fields = await _admin_form(request)
    version, env = _int(fields, "version"), _env(fields)
    try:
        weight = float(fields.get("weight", ""))
    except ValueError as exc:
        raise ConfigurationError("the canary weight is a percentage between 0 and 100") from exc
    if not 0 <= weight <= 100:
        raise ConfigurationError("the canary weight is a percentage between 0 and 100")

    def work() -> None:
        verify_version(console.registry, name, version, console.settings.public_key)
        DeploymentStore(console.registry, env).canary(name, version, weight, actor=operator.actor)

    return await _done(console, request, operator, f"{name}:{version} answers {weight:g}% of keys in '{env}'",
                       f"/models/{name}", work)


@router.post("/models/{name}/rollback")
async def rollback(request: Request, name: str) -> Response:
    """Make the previous stable version stable again (``fedguard deploy rollback``)."""
    console, operator, fields = await _admin_form(request)
    env = _env(fields)
    return await _done(console, request, operator, f"rolled {name} back in '{env}'", f"/models/{name}",
                       lambda: DeploymentStore(console.registry, env).rollback(name, actor=operator.actor))


@router.post("/models/{name}/kill")
async def kill(request: Request, name: str) -> Response:
    """Engage the kill switch (``fedguard deploy kill``): every replica answers 503 within its refresh interval."""
    console, operator, fields = await _admin_form(request)
    env = _env(fields)
    reason = fields.get("reason", "").strip() or "kill switch from the console"
    return await _done(console, request, operator,
                       f"killed {name} in '{env}': every server answers 503 within "
                       f"{console.settings.deploy_refresh_seconds:g} s", f"/models/{name}",
                       lambda: DeploymentStore(console.registry, env).kill(name, actor=operator.actor, reason=reason))


@router.post("/models/{name}/revive")
async def revive(request: Request, name: str) -> Response:
    """Release the kill switch (``fedguard deploy revive``)."""
    console, operator, fields = await _admin_form(request)
    env = _env(fields)
    return await _done(console, request, operator, f"revived {name} in '{env}'", f"/models/{name}",
                       lambda: DeploymentStore(console.registry, env).revive(name, actor=operator.actor))


@router.post("/models/{name}/retrain")
async def retrain(request: Request, name: str) -> Response:
    """Launch ``fedguard retrain NAME:VERSION --without-withdrawn`` in the background."""
    console, operator, fields = await _admin_form(request)
    version = _int(fields, "version")
    launcher = console.sources.retrain
    if launcher is None:
        raise NotFoundError("retraining runs on the coordinator: use the console that 'fedguard console' serves "
                            "there")
    message = await run_in_threadpool(launcher, f"{name}:{version}", actor=operator.actor)
    base = str(request.scope.get("root_path", "")).rstrip("/")
    return console.render(request, "message.html", operator, title="Retrain launched", message=message,
                          link=f"{base}/runs")


@router.post("/consent/withdraw")
async def withdraw(request: Request) -> Response:
    """Record a consent withdrawal (``fedguard site withdraw``); the versions it covers are tainted."""
    console, operator, fields = await _admin_form(request)
    site, scope = fields.get("site", "").strip(), fields.get("scope", "site")
    count = int(fields["record_count"]) if fields.get("record_count", "").strip().isdigit() else None
    enrolled = console.sources.sites.enrolled() if console.sources.sites is not None else []

    def work() -> None:
        ConsentStore(console.registry).withdraw(site, scope=scope, reason=fields.get("reason", ""),
                                                actor=operator.actor, record_count=count,
                                                records_digest=fields.get("records_digest", "").strip(),
                                                enrolled=enrolled)

    return await _done(console, request, operator, f"recorded the withdrawal of site {site} ({scope}); the "
                       "versions it covers are tainted", "/consent", work)


def _bundle(name: str, content: bytes) -> Response:
    """The bundle as a one-time download: never rendered, never cached, never kept by the console."""
    return Response(content, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}.bundle"',
                             "Cache-Control": "no-store"})


@router.post("/sites/enroll")
async def enroll(request: Request) -> Response:
    """Enrol a site (``fedguard site enroll``); the answer is its bundle, downloaded once."""
    console, operator, fields = await _admin_form(request)
    sites = console.sources.sites
    if sites is None:
        raise NotFoundError(ENROLMENT_ELSEWHERE)
    name = fields.get("name", "").strip()
    return _bundle(name, await run_in_threadpool(lambda: sites.enroll(name, actor=operator.actor)))


@router.post("/sites/{name}/rotate")
async def rotate(request: Request, name: str) -> Response:
    """New credentials for a site (``fedguard site rotate``); the answer is the new bundle."""
    console, operator, _ = await _admin_form(request)
    sites = console.sources.sites
    if sites is None:
        raise NotFoundError(ENROLMENT_ELSEWHERE)
    return _bundle(name, await run_in_threadpool(lambda: sites.rotate(name, actor=operator.actor)))


@router.post("/sites/{name}/revoke")
async def revoke(request: Request, name: str) -> Response:
    """Revoke a site for good (``fedguard site revoke``)."""
    console, operator, fields = await _admin_form(request)
    sites = console.sources.sites
    if sites is None:
        raise NotFoundError(ENROLMENT_ELSEWHERE)
    reason = fields.get("reason", "").strip() or "revoked from the console"
    return await _done(console, request, operator, f"site {name} revoked", "/sites",
                       lambda: sites.revoke(name, actor=operator.actor, reason=reason))
