"""The walk-back report in words, as JSON and HTML, and its export with its own hash in the audit trail.

:func:`complete` adds to what :func:`lifecycle.audit.trace.gather` collected
the plain-language summary (each sentence with a status: ``ok``, ``bad``,
``warn``, ``info``, never shown by colour alone) and the glossary, so that the
JSON and the HTML (:mod:`lifecycle.audit.report_html`) carry the same content.
:func:`export` writes one of them and records its SHA-256 as an
``audit.trace.exported`` event, in one transaction with nothing else: a
report handed to a regulator can later be matched against the audit trail.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from lifecycle import audit
from lifecycle.audit.glossary import GLOSSARY
from lifecycle.errors import StateError
from lifecycle.registry import Registry

FORMATS = ("html", "json")
EXPORTED = "audit.trace.exported"


def when(text: str | None) -> str:
    """An ISO time as people read it: ``14:00 UTC on 3 December 2026``."""
    if not text:
        return "an unknown time"
    moment = datetime.fromisoformat(text)
    clock = f"{moment:%H:%M:%S}" if moment.second or moment.microsecond else f"{moment:%H:%M}"
    return f"{clock} UTC on {moment.day} {moment:%B %Y}"


def _share(shares: dict[str, Any], version: int) -> str:
    value = shares.get(str(version))
    return "no" if value is None else f"{float(value):g}%"


def _serving_words(model: str, state: dict[str, Any], at: str) -> list[dict[str, str]]:
    env, moment = state["environment"], when(at)
    if not state["deployed"]:
        first = state["first_deployed_at"]
        later = f" The first deployment there was at {when(first)}." if first else " It was never deployed there."
        return [{"status": "info", "text": f"Nothing of model {model} was deployed in {env} at {moment}.{later}"}]
    event = state["in_force"]
    since = f"since {when(event['at'])}, by {event['actor']['described']}"
    if event["killed"] and event["pinned_version"] is None:
        reason = f" Reason given: “{event['reason']}”." if event["reason"] else ""
        return [{"status": "bad", "text": f"Model {model} was switched off in {env} at {moment} (kill switch, "
                                          f"{since}): every request was refused.{reason}"}]
    if event["killed"]:
        return [{"status": "warn", "text": f"The kill switch was on for model {model} in {env} at {moment} ({since}): "
                                           f"only version {event['pinned_version']} answered requests."}]
    words = [{"status": "ok", "text": f"This model ({model}) was answering requests in {env} at {moment} with version "
                                     f"{event['stable_version']} ({_share(event['shares'], event['stable_version'])} "
                                     f"of requests; deployed state {since})."}]
    candidate = event["candidate_version"]
    if candidate is not None and event["candidate_mode"] == "canary":
        words.append({"status": "info", "text": f"Version {candidate} was being tried on "
                                                f"{event['canary_weight']:g}% of callers (a canary)."})
    elif candidate is not None:
        words.append({"status": "info", "text": f"Version {candidate} received a copy of the traffic (a shadow) but "
                                                "answered no one."})
    return words


def _max(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return max(numbers) if numbers else None


def _training_words(story: dict[str, Any]) -> dict[str, str]:
    v, run, sites = story["version"], story["run"], story["sites"]
    if run is None:
        return {"status": "warn", "text": f"Version {v} has no recorded training run."}
    record, site_level = _max([s["epsilon"] for s in sites]), _max([s["site_epsilon"] for s in sites])
    privacy = ("no site's privacy loss was recorded" if record is None else
               f"the largest privacy loss of any site was ε = {record:g} for its records")
    if site_level is not None:
        privacy += f" and ε = {site_level:g} for the site as a whole"
    secure = story["bom"].get("secure_aggregation")
    names = ", ".join(s["site"] for s in sites) or "no site"
    return {"status": "info", "text": f"Version {v} was trained by federated learning ({run['mode']}) on {len(sites)} "
                                      f"site(s) ({names}) over {run['rounds']} round(s); {privacy}; secure "
                                      f"aggregation: {secure or 'not recorded'}."}


def _governance_words(story: dict[str, Any]) -> list[dict[str, str]]:
    v, words = story["version"], []
    gates = story["gates"]
    if not gates:
        words.append({"status": "info", "text": f"No gate decision was recorded for version {v} up to then."})
    else:
        last = gates[-1]
        where = f" in {last['environment']}" if last["environment"] else ""
        failing = ", ".join(c["criterion"] for c in last["criteria"] if not c["passed"])
        result = "passed every criterion" if last["passed"] else f"FAILED ({failing})"
        words.append({"status": "ok" if last["passed"] else "bad",
                      "text": f"{len(gates)} gate decision(s) were recorded for version {v}; the last, for stage "
                              f"{last['stage']}{where} at {when(last['at'])}, {result}."})
    approvals = story["approvals"]
    if approvals:
        bad = [a for a in approvals if not a["verified"]]
        words.append({"status": "bad" if bad else "ok",
                      "text": f"{len(approvals)} signed approval(s) for version {v}: "
                              + (f"{len(bad)} do(es) NOT verify." if bad else "every signature verifies today.")})
    for move in story["stage_events"]:
        if move["override"]:
            words.append({"status": "warn", "text": f"OVERRIDE: version {v} was moved to {move['to']} in "
                                                    f"{move['environment']} at {when(move['at'])} despite its gates, "
                                                    f"by {move['actor']['described']}; reason: “{move['reason']}”."})
    for approval in approvals:
        if approval["override"]:
            words.append({"status": "warn", "text": f"OVERRIDE signed by {approval['approver_name'] or 'an approver'} "
                                                    f"(key {approval['approver'][:16]}) for {approval['stage']} in "
                                                    f"{approval['environment']}; reason: “{approval['reason']}”."})
    return words


def _consent_words(story: dict[str, Any]) -> list[dict[str, str]]:
    v, consent, words = story["version"], story["consent"], []
    for taint in consent["taints"]:
        withdrawal = next((w for w in consent["withdrawals"] if w["id"] == taint["withdrawal_id"]), None)
        reason = f" (“{withdrawal['reason']}”)" if withdrawal and withdrawal["reason"] else ""
        words.append({"status": "bad", "text": f"Version {v} was TAINTED at {when(taint['at'])}: site {taint['site']} "
                                               f"withdrew consent for {taint['scope']} data{reason}."})
    if consent["withdrawals"] and not consent["taints"]:
        words.append({"status": "warn", "text": f"{len(consent['withdrawals'])} consent withdrawal(s) by this "
                                                f"version's sites were recorded, none tainting version {v}."})
    if not consent["withdrawals"] and not consent["taints"]:
        words.append({"status": "ok", "text": f"No consent withdrawal touched the data of version {v} up to then."})
    later = consent["after_question"]
    if later["withdrawals"] or later["taints"]:
        words.append({"status": "info", "text": f"After the time asked about, {later['withdrawals']} withdrawal(s) and "
                                                f"{later['taints']} taint(s) of version {v} were recorded."})
    for newer in story["superseded_by"]:
        words.append({"status": "info", "text": f"Version {v} was superseded by version {newer['version']} at "
                                                f"{when(newer['at'])}."})
    return words


def _version_words(story: dict[str, Any]) -> list[dict[str, str]]:
    v, signature = story["version"], story["signature"]
    words: list[dict[str, str]] = [] if story["published_at_question"] else [
        {"status": "warn", "text": f"Version {v} was not yet published at the time asked about (it was published at "
                                   f"{when(story['created_at'])}); what follows is what was recorded up to then."}]
    if signature["verified"]:
        words.append({"status": "ok", "text": f"Version {v}'s signature verifies today: its files are exactly those "
                                              f"signed by key {story['signer'][:16]}."})
    else:
        words.append({"status": "bad", "text": f"Version {v}'s signature does NOT verify today: {signature['detail']}"})
    words.append(_training_words(story))
    check = story["bom"].get("lineage_check")
    if not story["bom"]["readable"]:
        words.append({"status": "bad", "text": f"Version {v}'s ML-BOM cannot be read: {story['bom']['detail']}"})
    elif check and not check["agrees"]:
        words.append({"status": "bad", "text": check["detail"]})
    return words + _governance_words(story) + _consent_words(story)


def summary(report: dict[str, Any]) -> list[dict[str, str]]:
    """The report's findings as plain sentences, most important first (each with a status word)."""
    question, words = report["question"], []
    for state in report["serving"]:
        words.extend(_serving_words(question["model"], state, question["at"]))
    if question["version"] is not None and not report["serving"]:
        words.append({"status": "info", "text": f"Version {question['version']} was never deployed in any "
                                                "environment."})
    for story in report["versions"]:
        words.extend(_version_words(story))
    chain = report["audit"]["chain"]
    words.append({"status": "ok", "text": f"The audit trail verifies today: {chain['detail']}."} if chain["verified"]
                 else {"status": "bad", "text": f"The audit trail does NOT verify today: {chain['detail']}"})
    return words


def complete(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with its ``title``, ``summary`` and ``glossary``: what both renderings show."""
    q = report["question"]
    subject = f"version {q['version']} of {q['model']}" if q["version"] is not None else f"model {q['model']}"
    where = f" in {', '.join(q['environments'])}" if q["environments"] else ""
    return {**report, "title": f"Walk-back report: {subject}{where} at {when(q['at'])}",
            "summary": summary(report), "glossary": [{"term": t, "meaning": m} for t, m in GLOSSARY]}


def to_json(report: dict[str, Any]) -> bytes:
    """The machine-readable report: sorted keys, two-space indent, UTF-8."""
    return (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def to_html(report: dict[str, Any]) -> bytes:
    """The self-contained HTML report (no script, no external asset)."""
    from lifecycle.audit.report_html import render

    return render(report).encode()


RENDERERS: dict[str, Callable[[dict[str, Any]], bytes]] = {"html": to_html, "json": to_json}


def export(registry: Registry, report: dict[str, Any], fmt: str, path: Path | None, *, actor: str) -> tuple[bytes, str]:
    """Render ``report`` as ``fmt``, write it to ``path`` (``None``: only return it), audit its SHA-256.

    Returns the bytes and their SHA-256. The file is written before the audit
    event, so an event never names a report that was not produced.
    """
    content = RENDERERS[fmt](report)
    digest = hashlib.sha256(content).hexdigest()
    if path is not None:
        try:
            path.write_bytes(content)
        except OSError as exc:
            raise StateError(f"cannot write the report to {path}: {exc.strerror or exc}; choose another path") from exc
    q = report["question"]
    subject = f"{q['model']}:{q['version']}" if q["version"] is not None else q["model"]
    with registry.transaction() as session:
        audit.record(session, EXPORTED, actor=actor, subject=subject,
                     details={"model": q["model"], "env": q["environments"], "at": q["at"], "version": q["version"],
                              "sha256": digest, "format": fmt})
    return content, digest
