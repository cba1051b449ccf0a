"""``fedguard simulate``: a whole federation on this machine, with live progress."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from federation.defaults import (
    DEFAULT_CLIP_NORM,
    DEFAULT_DP_DELTA,
    DEFAULT_DP_EPSILON,
    DEFAULT_HIDDEN,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_SEED,
)

SECURE_RNG_NOTE = (
    "note: Opacus' secure RNG is OFF (torchcsprng is not installed): DP noise comes from torch's "
    "default PRNG — fine for research, not a cryptographic guarantee"
)


def _fmt_eps(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def off_warnings(dp_epsilon: float, watermark: str, secure_agg: str) -> list[str]:
    """One warning per protection the researcher switched off, each naming the flag that did it.

    ``--dp-epsilon 0`` is the one spelling of "no record-level DP" (an
    infinite ε is refused by :meth:`SimulationConfig.validate`): a run without
    DP says so as loudly as one without secure aggregation.
    """
    warnings = []
    if dp_epsilon == 0:
        warnings.append("warning: --dp-epsilon 0: record-level DP is off; sites' updates carry no DP guarantee")
    if watermark == "none":
        warnings.append("warning: --watermark none: the model will carry no ownership mark")
    if secure_agg == "none":
        warnings.append("warning: --secure-agg none: the coordinator sees each site's update in the clear")
    return warnings


MODEL_KEYS = ("model", "model-kwargs", "image-shape", "fix-model")
"""The run-config keys of ``[tool.flwr.app.config]`` that ``--app`` takes as the defaults of the model flags."""


def app_model_config(folder: str) -> dict[str, Any]:
    """The model keys of ``[tool.flwr.app.config]`` in ``FOLDER/pyproject.toml`` (empty: no such file, or no app)."""
    if not folder:
        return {}
    import tomllib
    from pathlib import Path

    from lifecycle.errors import ConfigurationError

    path = Path(folder) / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # a plain folder: only put on the import path
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"'{path}' is not valid TOML: {exc}") from None
    config = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return {key: config[key] for key in MODEL_KEYS if key in config}


class ProgressPrinter:
    """Prints one line per round and per stage; thread-safe enough for the ServerApp thread."""

    def __init__(self, console: Console, watermark: str = "trigger-set") -> None:
        self.console = console
        self.watermark = watermark

    def __call__(self, event: str, payload: Mapping[str, Any]) -> None:
        from coordinator.runs import render  # light (no engine): the CLI's start stays fast

        if event == "round":
            failed = f"  [red]{payload['failed']} failed[/red]" if payload["failed"] else ""
            site_eps = payload.get("site_epsilon")
            site = f"  site-level ε {site_eps:.2f}" if site_eps is not None else ""
            reasons = payload.get("reasons") or {}
            self.console.print(
                f"round {payload['round']}/{payload['rounds']}  test accuracy {payload['accuracy']:.3f}  "
                f"ε spent ≤ {_fmt_eps(payload['epsilon_max'])}{site}  sites {payload['sites']}{failed}"
                + (("\n" + render.reasons_line(reasons)) if reasons else "")
            )
        elif event == "stage":
            if payload["stage"] == "watermark" and self.watermark == "none":
                return  # nothing is embedded; the start of the run already warned
            if payload["stage"] == "partition":
                from simulations.data.render import print_report  # light: no engine

                print_report(self.console, str(payload["report"]))
                return
            messages = {
                "data": f"preparing data: {payload.get('dataset')} split across {payload.get('sites')} sites",
                "engine": f"starting Flower simulation on Ray (site sizes {_sizes(payload.get('site_sizes'))})",
                "cluster": f"attached to the Ray cluster at {payload.get('cluster')}",
            }
            stage = str(payload["stage"])
            text = (f"[dim]{messages[stage]}[/dim]" if stage in messages
                    else render.line({"event": event, **payload}))
            if text is not None:
                self.console.print(text)
        elif event != "done":  # the summary table below tells what was published
            text = render.line({"event": event, **payload})
            if text is not None:
                self.console.print(text)


def _sizes(sizes: Any) -> str:
    """``[120, 80]`` as ``120, 80`` (a list, never its repr; the first 10 of more)."""
    if not isinstance(sizes, (list, tuple)):
        return str(sizes)
    return ", ".join(str(s) for s in sizes[:10]) + (f", … ({len(sizes)} sites)" if len(sizes) > 10 else "")


def audit_line(section: Mapping[str, Any]) -> str:
    """``metrics.privacy_audit`` in one line: ε̂ against the ledger's ε, and the guesses behind it."""
    claimed = "none (no DP)" if section["epsilon"] is None else f"{section['epsilon']:.2f}"
    return (f"{'passed' if section['passed'] else 'FAILED'}: ε̂ ≥ {section['epsilon_lower_bound']:.3f} "
            f"({section['confidence']:.0%} confidence) vs ledger ε {claimed}; {section['correct']}/"
            f"{section['guesses']} guesses right, {section['included']} of {section['canaries']} canaries planted")


def _attack_line(attack: Mapping[str, Any]) -> str:
    """``scaling by site-3: attack_success_rate 0.91`` (the outcome's ``attack`` section, docs/research.md)."""
    measures = {key: value for key, value in attack.items() if key.endswith(("_rate", "_error"))}
    return (f"{attack['name']} by {', '.join(attack['attacker_sites'])}"
            + "".join(f"; {key} {value:.3f}" for key, value in measures.items()))


def _summary(console: Console, outcome: Mapping[str, Any]) -> None:
    table = Table(title=f"{outcome['model']}:{outcome['version']}", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    mark = outcome["watermark"]
    rows = [
        ("test accuracy", f"{outcome['accuracy']:.3f}"),
        ("central non-DP baseline", f"{outcome['baseline_accuracy']:.3f}"),
        (f"ε per site (δ={outcome['delta']})",
         ", ".join(f"{k}: {_fmt_eps(v)}" for k, v in outcome["epsilon"].items())),
        *(((f"site-level ε per site (δ={outcome['site_delta']})",
            ", ".join(f"{k}: {_fmt_eps(v)}" for k, v in outcome["site_epsilon"].items())),)
          if outcome.get("site_delta") else ()),
        ("secure aggregation", outcome["secure_aggregation"]),
        ("sites trained on", ", ".join(f"{device} ×{count}" for device, count in
                                       sorted(Counter(outcome.get("site_devices", {}).values()).items()))),
        ("watermark", f"{mark['scheme']}: verified={mark['verified']}, "
                      f"trigger accuracy {mark['trigger_accuracy']:.2f}, "
                      f"p={mark['p_value']:.1e}, accuracy cost {mark['accuracy_cost']:+.3f}"),
        ("signature", f"verified={outcome['signature']['verified']}  {outcome['signature_path']}"),
        ("artifact", outcome["artifact"]),
        ("public key", outcome["public_key"]),
        *((("privacy audit", audit_line(outcome["privacy_audit"])),) if outcome.get("privacy_audit") else ()),
        ("time", f"{outcome['seconds']:.1f} s"),
        *((("attack experiment", _attack_line(outcome["attack"])),) if outcome.get("attack") else ()),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


def simulate(
    sites: Annotated[int | None, typer.Option(
        "--sites", help="Number of virtual sites (default 5; by-column: one per value).")] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for split, init and sampling.")] = DEFAULT_SEED,
    dp_epsilon: Annotated[float, typer.Option(
        "--dp-epsilon", help="Per-site record-level ε for the whole run (0: no DP).")] = DEFAULT_DP_EPSILON,
    dp_delta: Annotated[float, typer.Option("--dp-delta", help="Per-site δ.")] = DEFAULT_DP_DELTA,
    max_grad_norm: Annotated[float, typer.Option(
        "--max-grad-norm", help="DP-SGD per-example clipping norm.")] = DEFAULT_MAX_GRAD_NORM,
    alpha: Annotated[float, typer.Option("--alpha", help="Dirichlet α of the non-IID split.")] = 0.5,
    dataset: Annotated[str, typer.Option(
        "--dataset", help="breast-cancer, digits, wine or synthetic[:classes].")] = "breast-cancer",
    data: Annotated[str, typer.Option("--data", help="Your pooled CSV or Parquet file (with --schema).")] = "",
    schema: Annotated[str, typer.Option("--schema", help="The site schema of --data (TOML or JSON).")] = "",
    partition: Annotated[str, typer.Option(
        "--partition", help="iid, dirichlet:α, by-column:COL or quantity-skew:β (default dirichlet:<alpha>).")] = "",
    records: Annotated[int, typer.Option("--records", help="Rows of --dataset synthetic (0: 10000).")] = 0,
    features: Annotated[int, typer.Option("--features", help="Columns of --dataset synthetic (0: 20).")] = 0,
    local_epochs: Annotated[int, typer.Option(
        "--local-epochs", help="Local epochs per round (0: 1 under DP with ε < 3, else 2).")] = DEFAULT_LOCAL_EPOCHS,
    hidden: Annotated[str, typer.Option(
        "--hidden", help="Hidden layer sizes, e.g. 32 or 64,32; 'none': a linear model (better under ε < 3).")
    ] = DEFAULT_HIDDEN,
    model: Annotated[str | None, typer.Option(
        "--model", help="mlp, cnn (images: the feature row as C×H×W) or package.module:ClassName, your own "
        "nn.Module (docs/models.md); default: the --app's model, else mlp.")] = None,
    model_kwargs: Annotated[str | None, typer.Option(
        "--model-kwargs", help="Your module's keyword arguments as a JSON object.")] = None,
    image_shape: Annotated[str, typer.Option(
        "--image-shape", help="--model cnn: channels,height,width (default: a square single-channel image).")] = "",
    fix_model: Annotated[bool | None, typer.Option(
        "--fix-model", help="Let Opacus' ModuleValidator.fix replace the layers DP-SGD cannot train.")] = None,
    app: Annotated[str, typer.Option(
        "--app", help="Your project folder (fedguard new): its model is importable, and the model keys of its "
        "pyproject's tool.flwr.app.config are the defaults.")] = "",
    model_name: Annotated[str, typer.Option(
        "--model-name", help="Registry name (default: the dataset or --data file name).")] = "",
    watermark: Annotated[str, typer.Option(
        "--watermark", help="Watermark scheme: trigger-set, weight-key, or 'none'.")] = "trigger-set",
    aggregation: Annotated[str, typer.Option("--aggregation", help="fedavg, median, trimmed-mean, krum, multi-krum "
                                             "or bulyan (robust rules need --secure-agg none).")] = "fedavg",
    secure_agg: Annotated[str, typer.Option("--secure-agg", help="secagg+, ckks or none.")] = "secagg+",
    keys_ahead: Annotated[bool, typer.Option(
        "--secagg-keys-ahead/--secagg-setup-each-round", help="SecAgg+: next round's keys and share-keys stage ride "
        "on this round's, so later rounds run 2 message stages instead of 4 (docs/secure-aggregation.md).")] = True,
    clip_norm: Annotated[float, typer.Option(
        "--clip-norm", help="L2 bound on each site's update under secure aggregation.")] = DEFAULT_CLIP_NORM,
    site_epsilon: Annotated[float, typer.Option(
        "--site-epsilon", help="Site-level ε for the whole run (0: off).")] = 0.0,
    site_clip: Annotated[float, typer.Option("--site-clip", help="Site-level DP clipping bound C.")] = 1.0,
    cpus_per_site: Annotated[float, typer.Option(
        "--cpus-per-site", help="CPU cores Ray reserves for each site.")] = 1.0,
    gpus_per_site: Annotated[float, typer.Option(
        "--gpus-per-site", help="GPU share Ray reserves for each site (e.g. 0.25); sites then train on it.")] = 0.0,
    strategy: Annotated[str, typer.Option(
        "--strategy", help="fedavg, fedprox, fedadam, fedyogi or fedavgm (docs/research.md).")] = "fedavg",
    proximal_mu: Annotated[float, typer.Option("--proximal-mu", help="FedProx μ (--strategy fedprox).")] = 0.0,
    server_lr: Annotated[float, typer.Option(
        "--server-lr", help="Server optimiser η (fedadam, fedyogi, fedavgm); 0: the strategy's default.")] = 0.0,
    canaries: Annotated[int, typer.Option(
        "--canaries", help="Audit this run: plant N mislabelled canaries; ε̂ is signed into the model's metrics.")] = 0,
    attack: Annotated[str, typer.Option("--attack", help="Attack run by some sites, name[:param] (label-flipping, "
                                        "sign-flipping, scaling, backdoor, alie; docs/research.md).")] = "none",
    attackers: Annotated[float, typer.Option("--attackers", help="Fraction of the sites that attack.")] = 0.0,
    ray_address: Annotated[str, typer.Option("--ray-address", help=(
        "Attach to a running Ray cluster (host:port or 'auto'); default: RAY_ADDRESS, else a local Ray"))] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON (last stdout line).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Train a model across simulated sites with DP, then watermark, sign and register it."""
    from simulations.data.options import cli_sites, resolve_data
    from simulations.federation import SimulationConfig, run  # heavy: torch, Flower, Ray

    console = Console(stderr=as_json)
    declared = app_model_config(app)
    cfg = SimulationConfig(
        sites=cli_sites(sites, partition), rounds=rounds, seed=seed, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
        max_grad_norm=max_grad_norm, alpha=alpha, dataset=dataset, local_epochs=local_epochs,
        hidden=hidden, model=model if model is not None else str(declared.get("model", "mlp")),
        model_kwargs=model_kwargs if model_kwargs is not None else str(declared.get("model-kwargs", "")),
        image_shape=image_shape or str(declared.get("image-shape", "")),
        fix_model=fix_model if fix_model is not None else bool(declared.get("fix-model", False)), app=app,
        model_name=model_name, watermark=watermark, aggregation=aggregation, secure_agg=secure_agg,
        secagg_keys_ahead=keys_ahead,
        clip_norm=clip_norm, site_epsilon=site_epsilon, site_clip=site_clip,
        cpus_per_site=cpus_per_site, gpus_per_site=gpus_per_site, canaries=canaries,
        strategy=strategy, proximal_mu=proximal_mu, server_lr=server_lr,
        data=data, schema=schema, partition=partition, records=records, features=features,
        attack=attack, attackers=attackers, ray_address=ray_address,
    )
    cfg = resolve_data(cfg)  # reads a --data file; by-column: one site per value
    cfg.validate()  # refuses an infinite or NaN ε: 0 is the explicit "no DP"
    for warning in off_warnings(dp_epsilon, watermark, secure_agg):
        console.print(f"[yellow]{warning}[/yellow]", highlight=False)
    outcome = run(cfg, ProgressPrinter(console, watermark), verbose=verbose)
    if dp_epsilon > 0 and not outcome.get("secure_rng", False):
        console.print(f"[yellow]{SECURE_RNG_NOTE}[/yellow]")
    if as_json:
        print(json.dumps(outcome, default=str))
    else:
        _summary(console, outcome)
