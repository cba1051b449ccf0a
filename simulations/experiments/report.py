"""``fedguard experiment report``: one self-contained HTML page (and PNG/SVG files) from a results folder.

The page needs nothing beside it: figures are inline SVG, styles inline, no
script, no font or CDN, so it can be mailed or archived as one file. Each
figure is captioned with what a reader needs to rerun it: the settings its
trials share, the seeds it averages over, the trial ids and the command.
Trials that could not run are listed with their reason, never dropped.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.errors import NotFoundError
from simulations.experiments.aggregate import Record, common, group_by, label, metric, seeds, spread, varied
from simulations.experiments.figures import FIGURES, Drawn, Skipped, attacks
from simulations.experiments.records import read_records

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
figure{margin:1.5em 0;border-top:1px solid #ddd;padding-top:1em}figure svg{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#444}code{background:#f4f4f4;padding:0 .2em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:left}.failed{color:#b00}.not-applicable{color:#a60}.note{color:#a60}"""


@dataclass(frozen=True)
class Written:
    """What the report wrote: the HTML file, and each figure's SVG and PNG files."""

    html: Path
    figures_dir: Path
    figures: tuple[Path, ...]


def _load(results: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """A results folder's trial records, its sweep description and the command that reruns it."""
    records = read_records(results)
    if not records:
        raise NotFoundError(f"{results}: no trial records in {results / 'trials'}; "
                            f"run 'fedguard experiment run GRID --out {results}' first")
    sweep = _sweep(results)
    return records, sweep, sweep.get("command") or f"fedguard experiment run GRID --out {results}"


def write_report(results: Path, html_path: Path) -> Written:
    """Draw every figure the records allow and write the HTML page and the figure files."""
    records, sweep, command = _load(results)
    figures_dir = html_path.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r["status"] == "ok"]
    sections, files = [], []
    for draw in FIGURES:
        result = draw([r for r in records if r["status"] in ("ok", "not-applicable")] if draw is attacks else ok)
        if isinstance(result, Skipped):
            sections.append(f"<section><h2>{_e(result.title)}</h2><p class=note>Not drawn: {_e(result.reason)}."
                            "</p></section>")
            continue
        svg, paths = _save(result, figures_dir)
        files += paths
        sections.append(f"<figure id={result.name}><h2>{_e(result.title)}</h2>{svg}"
                        f"<figcaption>{_caption(result, command)}</figcaption></figure>")
    page = _page(sweep, records, command, sections)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page, encoding="utf-8")
    return Written(html_path, figures_dir, tuple(files))


def write_markdown(results: Path, path: Path) -> Path:
    """Write the results per setting as Markdown (:mod:`.markdown`): the settings shared, the command, the table."""
    from simulations.experiments.markdown import settings_line, summary_markdown

    records, sweep, command = _load(results)
    text = (f"Experiment `{sweep.get('name', '')}`: {len(records)} trials, mean ± sd over seeds; shared settings: "
            f"{settings_line(records)}. Rerun: `{command}`.\n\n{summary_markdown(records)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _sweep(results: Path) -> dict[str, Any]:
    path = results / "sweep.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return loaded


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _save(drawn: Drawn, folder: Path) -> tuple[str, list[Path]]:
    """Write the figure as SVG and PNG; return the SVG markup to inline (no XML prolog) and the files."""
    svg_path, png_path = folder / f"{drawn.name}.svg", folder / f"{drawn.name}.png"
    drawn.figure.savefig(svg_path, format="svg", metadata={"Date": None})
    drawn.figure.savefig(png_path, format="png", dpi=120)
    markup = svg_path.read_text(encoding="utf-8")
    markup = re.sub(r"^(<\?xml[^>]*>\s*)?(<!DOCTYPE[^>]*>\s*)?", "", markup)
    return markup, [svg_path, png_path]


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"<code>{_e(k)} = {_e(json.dumps(v))}</code>" for k, v in settings.items())


def _caption(drawn: Drawn, command: str) -> str:
    shared = common(drawn.records, exclude=["seed"])
    ids = ", ".join(sorted(str(r["id"]) for r in drawn.records))
    parts = [f"Mean ± sd over seeds {_e(seeds(drawn.records))} ({len(drawn.records)} trials).",
             f"Settings that vary between them: {_e(', '.join(varied(drawn.records, exclude=['seed'])) or 'none')}.",
             f"Settings shared by every trial drawn: {_settings_text(shared)}.",
             f"Trials: <code>{_e(ids)}</code> (<code>trials/&lt;id&gt;.json</code> holds each one's exact settings).",
             f"Rerun: <code>{_e(command)}</code>."]
    if drawn.note:
        parts.insert(0, f"<span class=note>{_e(drawn.note)}</span>")
    return "<br>".join(parts)


def _page(sweep: Mapping[str, Any], records: Sequence[Record], command: str, sections: Iterable[str]) -> str:
    counts = Counter(str(r["status"]) for r in records)
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(sweep.get('name', 'experiment'))}"
            f"</title><style>{STYLE}</style></head><body><h1>Experiment {_e(sweep.get('name', ''))}</h1>"
            f"<p>{len(records)} trials: {_e(status)}. Rerun or resume: <code>{_e(command)}</code> "
            "(trials with a record are not rerun).</p>"
            + "".join(sections) + _summary_table(records) + _trials_table(records) + "</body></html>\n")


def _summary_table(records: Sequence[Record]) -> str:
    keys = varied(records, exclude=["seed"])
    rows = []
    for values, group in group_by(records, keys).items():
        ok = [r for r in group if r["status"] == "ok"]
        cells = [_e(label(keys, values)), _e(seeds(group)),
                 *(_e(spread(metric(m)(r) for r in ok) or "–")
                   for m in ("final_accuracy", "record_epsilon_spent", "site_epsilon_spent"))]
        others = sorted({f"{r['status']}: {r.get('error', '')}" for r in group if r["status"] != "ok"})
        cells.append("<br>".join(f"<span class={_e(o.split(':')[0])}>{_e(o)}</span>" for o in others))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<h2>Results per setting (mean ± sd over seeds)</h2><table><tr><th>setting</th><th>seeds</th>"
            "<th>final accuracy</th><th>record-level ε spent</th><th>site-level ε spent</th>"
            "<th>trials not ok</th></tr>" + "".join(rows) + "</table>")


def _trials_table(records: Sequence[Record]) -> str:
    keys = varied(records)
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = []
    for r in records:
        settings = {**{k.replace("_", "-"): v for k, v in r.get("config", {}).items()}, **r.get("settings", {})}
        accuracy = metric("final_accuracy")(r)
        cells = [f"<code>{_e(r['id'])}</code>", f"<span class={_e(r['status'])}>{_e(r['status'])}</span>",
                 *(_e(settings.get(k, "")) for k in keys), _e("–" if accuracy is None else f"{accuracy:.3f}"),
                 _e(f"{float(r.get('seconds', 0)):.1f}"), _e(r.get("error", ""))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<h2>Trials</h2><table><tr><th>id</th><th>status</th>{head}<th>final accuracy</th><th>seconds</th>"
            "<th>error or reason</th></tr>" + "".join(rows) + "</table>")
