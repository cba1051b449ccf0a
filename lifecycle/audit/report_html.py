"""The walk-back report as one self-contained HTML page, for readers who do not read JSON.

The page carries its own CSS inline and nothing else: no script, no font, no
image, no link to anything outside it, so it opens offline in a hospital
network, can be archived as one file, and prints cleanly (A4, black on white).
Status is never shown by colour alone: each finding carries a word and a
symbol (✔ verified, ✘ failed, ⚠ override or warning).

Every value that comes from the registry (reasons, names, actors, criteria)
is HTML-escaped through :func:`e`; only fragments built here, typed
:class:`Html`, pass unescaped. A reason string ``<script>…`` prints as text.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from lifecycle.audit.report import when


class Html(str):
    """A fragment of markup built by this module (already escaped)."""

    __slots__ = ()


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) or "none"
    if isinstance(value, list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return str(value)


def e(value: Any) -> Html:
    """``value`` as text in HTML: escaped, unless it is an :class:`Html` fragment built here."""
    return value if isinstance(value, Html) else Html(html.escape(_text(value), quote=True))


BR = Html("<br>")


def tag(name: str, *children: Any, cls: str = "") -> Html:
    """An element around ``children`` (each escaped unless it is :class:`Html`)."""
    attribute = f' class="{html.escape(cls)}"' if cls else ""
    return Html(f"<{name}{attribute}>" + "".join(e(c) for c in children) + f"</{name}>")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Iterable[str] = ()) -> Html:
    """A table; ``classes`` gives each row its class (``override`` rows print red, with the word OVERRIDE)."""
    row_classes = list(classes)
    body = [tag("tr", *(tag("td", cell) for cell in row), cls=row_classes[n] if n < len(row_classes) else "")
            for n, row in enumerate(rows)]
    if not body:
        return tag("p", "None recorded.", cls="none")
    return tag("table", tag("thead", tag("tr", *(tag("th", h) for h in headers))), tag("tbody", *body))


_MARKS = {"ok": "✔ OK", "bad": "✘ PROBLEM", "warn": "⚠ ATTENTION", "info": "ℹ NOTE"}


def status(kind: str, text: Any = "") -> Html:
    """A status badge: symbol and word always, colour only as a help."""
    return Html(tag("span", _MARKS[kind], cls=f"badge {kind}") + (e(" ") + e(text) if text != "" else Html("")))


def verified(ok: bool, yes: str = "verified", no: str = "does NOT verify") -> Html:
    """A pass/fail badge in words and symbol."""
    return tag("span", f"✔ {yes}" if ok else f"✘ {no}", cls=f"badge {'ok' if ok else 'bad'}")


def short(digest: Any, size: int = 16) -> Html:
    """A hash cut to ``size`` characters (the appendix has it whole)."""
    text = _text(digest)
    return tag("code", text[:size] + ("…" if len(text) > size else ""))


def actor(value: dict[str, Any]) -> Html:
    """An actor in plain words, with the identity as recorded beneath."""
    return Html(e(value["described"]) + BR + tag("code", value["text"]))


CSS = """
body{font:15px/1.5 Georgia,'Times New Roman',serif;color:#111;max-width:62rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #333;margin-top:2.2rem}h3{margin-top:1.4rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #999;padding:.25rem .45rem;text-align:left;vertical-align:top}th{background:#eee}
code{font:.85em 'DejaVu Sans Mono',Consolas,monospace;word-break:break-all}
.badge{font-weight:bold;padding:0 .3rem;border:1px solid;border-radius:3px;white-space:nowrap}
.ok{color:#155724}.bad{color:#a00000}.warn{color:#8a4b00}.info{color:#0b3d91}
tr.override td{color:#a00000;border-left:4px solid #a00000;font-weight:bold}
tr.in-force td{background:#f3f3f3;font-weight:bold}
ul.summary li{margin:.35rem 0;list-style:none}ul.summary{padding-left:0}
.question{font-size:1.1rem;border-left:4px solid #333;padding-left:.6rem}
.none{font-style:italic}dt{font-weight:bold;margin-top:.4rem}dd{margin-left:1.2rem}
footer{margin-top:2rem;font-size:.85rem;border-top:1px solid #999}
@media print{body{margin:0;max-width:none;font-size:11pt}h2{break-after:avoid}tr,li,dd{break-inside:avoid}
th{background:none}}
@page{size:A4;margin:18mm}
"""


def _serving(report: dict[str, Any]) -> list[Html]:
    parts: list[Html] = []
    for state in report["serving"]:
        event = state["in_force"]
        if event is None:
            parts.append(tag("p", status("info"), f" Nothing was deployed in {state['environment']} at that time."))
            continue
        killed = "no" if not event["killed"] else (
            f"YES: only version {event['pinned_version']} answered" if event["pinned_version"] is not None
            else "YES: every request refused")
        shares = ", ".join(f"version {v}: {float(s):g}%" for v, s in sorted(event["shares"].items())) or "none"
        parts.append(table(("environment", "stable version", "candidate", "kill switch", "share of requests",
                            "state since", "set by", "reason"),
                           [(state["environment"], event["stable_version"],
                             "—" if event["candidate_version"] is None else
                             f"version {event['candidate_version']} ({event['candidate_mode']}, "
                             f"{event['canary_weight']:g}%)",
                             killed, shares, when(event["at"]), actor(event["actor"]), event["reason"] or "—")]))
    return parts


def _sites(story: dict[str, Any]) -> Html:
    return table(("site", "enrolled identity", "records", "data manifest", "ε (records)", "δ", "ε (site)", "rounds"),
                 [(s["site"], tag("code", s["identity"]) if s["identity"] else "not enrolled (simulated site)",
                   s["num_examples"], short(s["data_manifest"]), s["epsilon"], s["delta"], s["site_epsilon"],
                   s["rounds"]) for s in story["sites"]])


def _bom(story: dict[str, Any]) -> list[Html]:
    bom = story["bom"]
    if not bom["readable"]:
        return [tag("p", status("bad", f"The ML-BOM cannot be read: {bom['detail']}"))]
    check = bom["lineage_check"]
    rows = [("ML-BOM SHA-256", short(bom["sha256"])),
            ("registry agrees with the signed ML-BOM", Html(verified(check["agrees"], "agrees", "DIFFERS")
                                                            + e(" ") + e(check["detail"]))),
            ("aggregation", bom["aggregation"]), ("secure aggregation", bom["secure_aggregation"]),
            ("rounds", bom["rounds"]), ("local epochs", bom["local_epochs"]), ("batch size", bom["batch_size"]),
            ("differential privacy (records)", bom["dp"]), ("differential privacy (sites)", bom["site_dp"]),
            ("fedguard code version", bom["code_version"]),
            ("main libraries", ", ".join(f"{k} {v}" for k, v in sorted(bom["dependencies"].items())) or "—"),
            ("governance summary signed into the BOM", bom["governance"] if bom["governance"] is not None
             else "none (published before gates were recorded in the BOM)")]
    return [table(("item", "value"), rows)]


def _gates(story: dict[str, Any]) -> list[Html]:
    if not story["gates"]:
        return [tag("p", "No gate decision recorded up to then.", cls="none")]
    parts = []
    for g in story["gates"]:
        where = f" in {g['environment']}" if g["environment"] else ""
        parts.append(tag("p", verified(g["passed"], "passed", "FAILED"),
                         f" Decision #{g['id']} for stage {g['stage']}{where}, {when(g['at'])} "
                         f"(trigger: {g['trigger']}, policy version: {_text(g['policy_version'])})"))
        parts.append(table(("criterion", "measured", "threshold", "result", "evidence"),
                           [(c["criterion"], c["measured"], c["threshold"], verified(c["passed"], "pass", "FAIL"),
                             c["evidence"]) for c in g["criteria"]]))
    return parts


def _approvals(story: dict[str, Any]) -> Html:
    approvals = story["approvals"]
    return table(("when", "kind", "stage / environment", "approver", "reason", "signature"),
                 [(when(a["at"]), Html(e(a["kind"]) + (e(" ⚠ OVERRIDE") if a["override"] else e(""))),
                   f"{a['stage']} / {a['environment']}",
                   Html(e(a["approver_name"] or "unnamed") + BR + short(a["approver"])), a["reason"],
                   Html(verified(a["verified"]) + BR + e(a["verification"])))
                  for a in approvals], ["override" if a["override"] else "" for a in approvals])


def _moves(story: dict[str, Any]) -> Html:
    moves = story["stage_events"]
    return table(("when", "environment", "from", "to", "by", "reason", "override"),
                 [(when(m["at"]), m["environment"], m["from"], m["to"], actor(m["actor"]), m["reason"],
                   "⚠ OVERRIDE" if m["override"] else "no") for m in moves],
                 ["override" if m["override"] else "" for m in moves])


def _consent(story: dict[str, Any]) -> list[Html]:
    consent = story["consent"]
    parts = [tag("p", status("bad", f"Version {story['version']} is TAINTED by withdrawn consent.")
                 if consent["tainted"] else status("ok", "Not tainted at that time."))]
    parts.append(table(("when", "site", "scope", "records", "reason", "by", "signed by the site"),
                       [(when(w["at"]), w["site"], w["scope"], w["record_count"], w["reason"], actor(w["actor"]),
                         w["signed"]) for w in consent["withdrawals"]]))
    later = consent["after_question"]
    if later["withdrawals"] or later["taints"]:
        parts.append(tag("p", status("info", f"Recorded after the time asked about: {later['withdrawals']} "
                                             f"withdrawal(s), {later['taints']} taint(s).")))
    for newer in story["superseded_by"]:
        parts.append(tag("p", status("info", f"Superseded by version {newer['version']} at {when(newer['at'])}.")))
    if story["supersedes"] is not None:
        parts.append(tag("p", f"This version supersedes version {story['supersedes']}."))
    return parts


def _version(n: int, story: dict[str, Any]) -> Html:
    run = story["run"]
    run_rows = [] if run is None else [("run", tag("code", run["id"])), ("mode", run["mode"]),
                                       ("status", run["status"]), ("rounds", run["rounds"]),
                                       ("started", when(run["started_at"])), ("finished", when(run["finished_at"])),
                                       ("configuration", run["config"])]
    overrides = story["overrides"]
    return tag("section",
               tag("h2", f"{n}. Version {story['version']}" + (f" — ⚠ {overrides} OVERRIDE(S)" if overrides else "")),
               tag("p", f"Published {when(story['created_at'])}; artifact ", short(story["artifact_digest"]),
                   "; signed by key ", short(story["signer"]), ". Signature checked now: ",
                   verified(story["signature"]["verified"]), " ", story["signature"]["detail"]),
               tag("h3", "What it was trained on (the signed ML-BOM)"), _sites(story), *_bom(story),
               tag("h3", "The training run"),
               table(("item", "value"), run_rows) if run_rows else tag("p", "No training run recorded.", cls="none"),
               tag("h3", "Gate decisions"), *_gates(story),
               tag("h3", "Approvals and overrides"), _approvals(story),
               tag("h3", "Stage moves"), _moves(story),
               tag("h3", "Consent"), *_consent(story))


def _deployments(report: dict[str, Any]) -> Html:
    events = report["deployments"]
    return table(("", "when", "environment", "action", "by", "stable", "candidate", "kill switch", "shares", "reason"),
                 [("◀ in force" if d["in_force"] else "", when(d["at"]), d["environment"], d["action"],
                   actor(d["actor"]), d["stable_version"],
                   "—" if d["candidate_version"] is None else f"{d['candidate_version']} ({d['candidate_mode']})",
                   ("on" + (f", pinned {d['pinned_version']}" if d["pinned_version"] is not None else ", 503"))
                   if d["killed"] else "off", d["shares"], d["reason"]) for d in events],
                 ["in-force" if d["in_force"] else "" for d in events])


def _audit(report: dict[str, Any]) -> list[Html]:
    chain, events = report["audit"]["chain"], report["audit"]["events"]
    parts = [tag("p", verified(chain["verified"]), " ", chain["detail"])]
    if report["audit"]["left_out"]:
        parts.append(tag("p", f"{report['audit']['left_out']} older event(s) left out; the JSON report has the same."))
    parts.append(table(("#", "when", "by", "action", "subject", "hash"),
                       [(a["id"], when(a["at"]), actor(a["actor"]),
                         Html(e(a["action"]) + (e(" ⚠ OVERRIDE") if a["override"] else e(""))), a["subject"],
                         short(a["hash"])) for a in events], ["override" if a["override"] else "" for a in events]))
    return parts


def _evidence(report: dict[str, Any]) -> Html:
    rows: list[tuple[Any, ...]] = []
    for story in report["versions"]:
        v = story["version"]
        rows += [(f"version {v}", "artifact digest (SHA-256)", tag("code", story["artifact_digest"])),
                 (f"version {v}", "signer key fingerprint", tag("code", story["signer"])),
                 (f"version {v}", "ML-BOM SHA-256", tag("code", story["bom"]["sha256"]))]
        rows += [(f"version {v}", f"approval #{a['id']} signature (Ed25519, base64)", tag("code", a["signature"]))
                 for a in story["approvals"]]
        rows += [(f"version {v}", f"withdrawal #{w['id']} records digest", tag("code", w["records_digest"]))
                 for w in story["consent"]["withdrawals"] if w["records_digest"]]
    rows += [(f"audit event #{a['id']}", a["action"], tag("code", a["hash"])) for a in report["audit"]["events"]]
    return table(("about", "what", "value"), rows)


def render(report: dict[str, Any]) -> str:
    """The whole page, from a :func:`lifecycle.audit.report.complete` report."""
    q = report["question"]
    sections = [_version(n + 2, story) for n, story in enumerate(report["versions"])]
    next_n = len(report["versions"]) + 2
    body = [
        tag("header", tag("h1", report["title"]),
            tag("p", f"Question asked: what was serving model {q['model']}"
                     + (f" (version {q['version']})" if q["version"] is not None else "")
                     + (f" in {', '.join(q['environments'])}" if q["environments"] else "")
                     + f" at {when(q['at'])}, and why?", cls="question"),
            tag("p", f"Report produced at {when(report['generated_at'])} by fedguard from its registry "
                     f"(report format {report['format']}). Its SHA-256 is recorded in the audit trail.")),
        tag("section", tag("h2", "Summary"),
            tag("ul", *(tag("li", status(s["status"], s["text"])) for s in report["summary"]), cls="summary")),
        tag("section", tag("h2", "1. What was serving"), *_serving(report)),
        *sections,
        tag("section", tag("h2", f"{next_n}. Deployment events around that time"),
            tag("p", "The ten events before and after the one in force, oldest first."), _deployments(report)),
        tag("section", tag("h2", f"{next_n + 1}. The audit trail"), *_audit(report)),
        tag("section", tag("h2", "Glossary"),
            tag("dl", *(Html(tag("dt", g["term"]) + tag("dd", g["meaning"])) for g in report["glossary"]))),
        tag("section", tag("h2", "Appendix: evidence hashes"),
            tag("p", "Anyone can recompute these from the registry and the artifact store to check this report."),
            _evidence(report)),
        tag("footer", tag("p", "Produced by fedguard audit trace. Technical words are defined in the glossary.")),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(report['title'])}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
