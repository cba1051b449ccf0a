"""Your own PyTorch module as a fedguard model: imported by name, pinned by its code hash, checked for DP-SGD.

A custom model is named ``package.module:ClassName`` (``ModelSpec(kind="custom")``).
fedguard *imports* the class and calls it with ``in_features``,
``num_classes`` and the spec's JSON keyword arguments; it never unpickles a
model object, so a model file cannot run code that the code review did not
see. The module's source file is hashed (SHA-256) when the run is described,
the hash travels in the spec (round messages, the signed ML-BOM's
``architecture`` section and model card), and every later build, at a site,
at the coordinator or when a published model is reloaded, refuses a source
whose hash differs: everyone trains, and the registry describes, the same code.

The module takes the flat feature row (the schema's features, standardized by
fedguard's :class:`~lifecycle.architecture.Standardize` layer placed in front
of it) and returns logits ``[batch, num_classes]``.

DP-SGD needs per-example gradients, which Opacus computes for the layers its
``ModuleValidator`` accepts (no batch norm, which mixes the examples of a
batch; no modules that Opacus cannot hook). :func:`check_for_dp_sgd` reports
*every* problem in one error; with ``fix`` (``--fix-model`` / ``fix-model =
true``) :func:`build_custom` applies ``ModuleValidator.fix`` at every build
(e.g. ``BatchNorm2d`` → ``GroupNorm``) and :func:`fix_changes` says what it
replaced.

Notes
-----
Yousefpour et al. (2021), "Opacus: User-Friendly Differential Privacy Library
in PyTorch" (``ModuleValidator``); Abadi et al. (2016), "Deep Learning with
Differential Privacy" (why per-example gradients must not mix examples).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifecycle.description import ModelSpec, canonical_json
from lifecycle.errors import ConfigurationError

__all__ = ["ModelValidationError", "build_custom", "check_for_dp_sgd", "describe_custom", "dp_sgd_problems",
           "fix_changes", "import_path", "resolve_class", "source_sha256"]

logger = logging.getLogger("fedguard.lifecycle")


class ModelValidationError(ConfigurationError):
    """A custom model cannot be trained as described (every problem named at once)."""


def import_path(folder: Path) -> None:
    """Put ``folder`` (a project with the model's package) first on the import path, once."""
    text = str(folder.resolve())
    if text not in sys.path:
        sys.path.insert(0, text)


def _module_of(module_path: str) -> Any:
    name = module_path.partition(":")[0]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import '{name}' for model '{module_path}': {exc}; run from the project folder "
            "(fedguard simulate --app DIR) or put it on PYTHONPATH"
        ) from None


def resolve_class(module_path: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass named ``package.module:ClassName``."""
    module = _module_of(module_path)
    name = module_path.partition(":")[2]
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigurationError(
            f"'{module_path}' is not a torch.nn.Module subclass; name the class that defines your model"
        )
    return found


def source_sha256(module_path: str) -> str:
    """SHA-256 of the source file that defines ``module_path``'s module (what the ML-BOM pins)."""
    module = _module_of(module_path)
    source = inspect.getsourcefile(module)
    if source is None:
        raise ConfigurationError(
            f"'{module_path}' has no Python source file to hash; define the model in a .py file"
        )
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


def _instantiate(spec: ModelSpec) -> nn.Module:
    cls = resolve_class(spec.module)
    try:
        return cls(in_features=spec.in_features, num_classes=spec.num_classes, **spec.kwargs_dict)
    except TypeError as exc:
        raise ConfigurationError(
            f"cannot build {spec.module}(in_features={spec.in_features}, num_classes={spec.num_classes}, "
            f"**{spec.kwargs_dict}): {exc}; its __init__ must take in_features and num_classes"
        ) from None


def build_custom(spec: ModelSpec) -> nn.Module:
    """The user's module for ``spec`` (fresh weights), Opacus-fixed when ``spec.fix``.

    Raises
    ------
    ConfigurationError
        The source's hash differs from the one ``spec`` pins, or the class
        cannot be imported or built.
    """
    if spec.code_sha256:
        found = source_sha256(spec.module)
        if found != spec.code_sha256:
            raise ConfigurationError(
                f"the source of {spec.module} has SHA-256 {found[:12]}… but the model was described with "
                f"{spec.code_sha256[:12]}…: run the same model code at the coordinator and every site"
            )
    model = _instantiate(spec)
    if spec.fix:
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
    return model


def dp_sgd_problems(model: nn.Module) -> list[str]:
    """Every objection of Opacus' ``ModuleValidator`` to ``model``, each as ``submodule: first sentence``.

    The same checks as ``ModuleValidator.validate(model, strict=False)``
    (its validator registry, on the trainable submodules), run per submodule
    so that each problem names the layer it is about, which Opacus' own
    messages do not. The model is checked in training mode, as it trains.
    """
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems: list[str] = []
    for name, sub in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(sub))
        for error in validator(sub) if validator is not None else []:
            text = str(error).strip()
            first = text.split(". ")[0].rstrip(".")
            problems.append(f"{name or '<root>'} ({type(sub).__name__}): {first}")
    return problems


def check_for_dp_sgd(model: nn.Module, name: str) -> None:
    """Raise one :class:`ModelValidationError` naming all of Opacus' objections to ``model``, if any."""
    problems = dp_sgd_problems(model)
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise ModelValidationError(
            f"model {name} cannot train under DP-SGD, {len(problems)} problem(s): {listed}; replace those "
            "layers, or pass --fix-model (fix-model = true) to let Opacus' ModuleValidator.fix replace them"
        )


def fix_changes(before: nn.Module, after: nn.Module) -> list[str]:
    """What ``ModuleValidator.fix`` replaced: ``name: Old → New`` for each submodule whose type changed."""
    old = {name: type(m).__name__ for name, m in before.named_modules()}
    new = {name: type(m).__name__ for name, m in after.named_modules()}
    return [f"{name or '<root>'}: {old[name]} → {new[name]}" for name in old if name in new and old[name] != new[name]]


def describe_custom(
    module_path: str, in_features: int, num_classes: int, *, kwargs: str = "", fix: bool = False,
    dp_sgd: bool = True,
) -> tuple[ModelSpec, list[str]]:
    """The pinned spec of a custom model, and what ``fix`` changed; checked before any training starts.

    Imports the class, hashes its source, builds it once, checks that it maps
    ``[batch, in_features]`` to ``[batch, num_classes]`` and, when the run
    trains with DP-SGD (``dp_sgd``), that Opacus accepts it.

    Raises
    ------
    ModelValidationError
        Opacus rejects the (fixed) model, or its output has the wrong shape.
    ConfigurationError
        The class cannot be imported or built.
    """
    unpinned = ModelSpec(in_features, num_classes, (), "custom", module=module_path,
                         kwargs=canonical_json(_json_object(kwargs)) if kwargs.strip() else "", fix=fix)
    spec = dataclasses.replace(unpinned, code_sha256=source_sha256(module_path))
    torch.manual_seed(0)
    plain = _instantiate(spec)
    model = build_custom(spec)
    changes = fix_changes(plain, model) if fix else []
    if changes:
        logger.warning("model %s: ModuleValidator.fix replaced %s", module_path, ", ".join(changes))
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(2, in_features))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelValidationError(
                f"model {module_path} cannot take a batch of {in_features} features: {exc}; it must map "
                "[batch, features] to [batch, classes] logits"
            ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelValidationError(
            f"model {module_path} returned {shape} for a batch of 2; return logits of shape [batch, {num_classes}]"
        )
    if dp_sgd:
        check_for_dp_sgd(model, module_path)
    return spec, changes


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"model-kwargs '{text}' is not JSON: {exc}; give an object, e.g. "
                                 "'{\"hidden\": 32}'") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"model-kwargs '{text}': give a JSON object, e.g. '{{\"hidden\": 32}}'")
    return value
