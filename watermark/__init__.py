"""Ownership watermarks for the aggregated model: embed after the last round, verify later.

Public API::

    scheme = create_scheme("trigger-set")          # or "weight-key"
    secret = scheme.generate(model, spec, generator=torch.Generator().manual_seed(s))
    report = scheme.embed(model, secret, generator=generator)   # report.model is watermarked
    scheme.verify(report.model, secret)                         # raises WatermarkError if absent
    digest = save_secret(secret, secret_path(keys_dir, commitment(secret)))

The names are imported on first use (PEP 562), so that the serving process can
import the torch-free :mod:`watermark.evidence` and
:mod:`watermark.significance` without loading torch through this package.
See ``docs/watermark.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watermark.base import EmbedReport, Verification, WatermarkScheme, WatermarkSecret
    from watermark.registry import available_schemes, create_scheme, register_scheme
    from watermark.secret import commitment, load_secret, save_secret, secret_path
    from watermark.significance import binomial_p_value

_HOMES = {
    "EmbedReport": "watermark.base", "Verification": "watermark.base", "WatermarkScheme": "watermark.base",
    "WatermarkSecret": "watermark.base", "available_schemes": "watermark.registry",
    "create_scheme": "watermark.registry", "register_scheme": "watermark.registry",
    "commitment": "watermark.secret", "load_secret": "watermark.secret", "save_secret": "watermark.secret",
    "secret_path": "watermark.secret", "binomial_p_value": "watermark.significance",
}

__all__ = [
    "EmbedReport",
    "Verification",
    "WatermarkScheme",
    "WatermarkSecret",
    "available_schemes",
    "binomial_p_value",
    "commitment",
    "create_scheme",
    "load_secret",
    "register_scheme",
    "save_secret",
    "secret_path",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'watermark' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
