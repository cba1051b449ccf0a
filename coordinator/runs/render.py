"""Progress events in words, for ``fedguard run launch|resume|status`` and ``fedguard simulate``.

One line per event of ``progress.jsonl`` (:mod:`coordinator.runs.progress`),
with Rich markup; sites are named by their enrolled names and their reasons
are the one-line messages they sent (:class:`federation.protocol.SiteRefusal`),
never node ids, dicts or Python reprs. An event with nothing to tell the
operator renders as ``None`` and is not printed. Imports nothing heavy: the
CLI imports this module at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lifecycle.errors import FedguardError, SitesUnavailableError, TrainingError

_STAGES = {
    "watermark": "embedding and verifying the watermark",
    "publish": "signing and registering the model",
    "data": "preparing data",
    "engine": "starting the Flower simulation",
    "training": "training",
}


def _eps(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def reasons_line(reasons: Mapping[str, Any], *, indent: str = "  ") -> str:
    """One ``name: reason`` line per site."""
    return "\n".join(f"{indent}{name}: {reason}" for name, reason in sorted(reasons.items()))


def missing_text(missing: Mapping[str, Any]) -> str:
    """``"kings — not connected, queens — the site's data …"``."""
    return ", ".join(f"{name} — {reason}" for name, reason in sorted(missing.items())) or "none"


def _round(event: Mapping[str, Any]) -> str:
    dropped = list(event.get("dropped") or [])
    reasons = dict(event.get("reasons") or {})
    line = (f"round {event['round']}/{event['rounds']}  sites answered {event['sites']}  "
            f"ε ≤ {_eps(event.get('epsilon_max'))}  accuracy {float(event['accuracy']):.3f}")
    if event.get("site_epsilon") is not None:
        line += f"  site-level ε {_eps(event['site_epsilon'])}"
    if dropped:
        line += f"  [red]dropped {', '.join(dropped)}[/red]"
    if reasons:
        line += "\n" + reasons_line(reasons)
    return line


def _stage(event: Mapping[str, Any]) -> str | None:
    stage = str(event.get("stage"))
    if stage == "identified":
        names = list(event.get("names") or [])
        needed = event.get("needed")
        head = f"{event.get('sites', len(names))}" + (f" of {needed} needed" if needed is not None else "")
        line = f"[dim]sites identified: {head}{': ' + ', '.join(names) if names else ''}[/dim]"
        refused = dict(event.get("refused") or {})
        if refused:
            line += "\n[yellow]not taking part:[/yellow]\n" + reasons_line(refused)
        if event.get("resumed_after"):
            line += f"\n[dim]resuming after round {event['resumed_after']}[/dim]"
        return line
    if stage == "publish" and event.get("already_published"):
        return f"[dim]already published as {event['already_published']}; writing its outcome[/dim]"
    if stage == "watermark" and event.get("scheme") == "none":
        return None
    if stage in _STAGES:
        return f"[dim]{_STAGES[stage]}[/dim]"
    return f"[dim]{stage.replace('-', ' ')}[/dim]"


def _failed(event: Mapping[str, Any]) -> str:
    message = event.get("message") or event.get("error") or "no reason recorded"
    code = event.get("exit_code")
    return f"[red]run failed{f' (exit {code})' if code else ''}:[/red] {message}"


def line(event: Mapping[str, Any]) -> str | None:
    """The words for one progress event (Rich markup), or None when there is nothing to show."""
    kind = event.get("event")
    if kind == "round":
        return _round(event)
    if kind == "stage":
        return _stage(event)
    if kind == "waiting":
        return (f"[yellow]waiting for sites:[/yellow] {event.get('identified')} of {event.get('needed')}, "
                f"missing {missing_text(event.get('missing') or {})}")
    if kind == "unavailable":
        return (f"[red]too few sites:[/red] {event.get('identified')} of {event.get('needed')} can take part; "
                f"missing:\n" + reasons_line(event.get("missing") or {}))
    if kind == "done":
        return f"[green]published {event['model']}:{event['version']}[/green]  accuracy {float(event['accuracy']):.3f}"
    if kind == "failed":
        return _failed(event)
    if kind == "stopped":
        return f"[yellow]run stopped[/yellow] by {event.get('actor') or 'an operator'}"
    fields = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in event.items() if k not in ("event", "time"))
    return f"[dim]{kind}{': ' + fields if fields else ''}[/dim]"


def failure(run_id: str, event: Mapping[str, Any]) -> FedguardError:
    """The error a follower ends with for a ``failed`` event (exit 9 when too few sites could take part)."""
    message = f"run {run_id} failed: {event.get('message') or event.get('error')}"
    if event.get("exit_code") == SitesUnavailableError.exit_code:
        return SitesUnavailableError(message)
    return TrainingError(message)


def site_reasons(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Per site, the latest reason it did not take part (identify phase or a round), for ``run status``."""
    reasons: dict[str, str] = {}
    for event in events:
        kind = event.get("event")
        if kind == "stage" and event.get("stage") == "identified":
            reasons = dict(event.get("refused") or {})
        elif kind in ("waiting", "unavailable"):
            reasons = dict(event.get("missing") or {})
        elif kind == "round":
            reasons = dict(event.get("reasons") or {})
    return reasons


def status_line(info: Mapping[str, Any]) -> str:
    """``run status`` in words: ``key: value`` pairs; lists joined; per-site reasons as ``name: reason``."""
    parts = []
    for key, value in info.items():
        if isinstance(value, Mapping):
            if value:
                parts.append(f"{key}: " + "; ".join(f"{k}: {v}" for k, v in sorted(value.items())))
        elif isinstance(value, (list, tuple)):
            parts.append(f"{key}: {', '.join(str(v) for v in value) or '-'}")
        else:
            parts.append(f"{key}: {'-' if value is None else value}")
    return "  ".join(parts)
