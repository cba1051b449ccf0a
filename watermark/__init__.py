"""Ownership watermarks for the aggregated model: embed after the last round, verify later.

Public API::

    scheme = create_scheme("trigger-set")
    secret = scheme.generate(model, spec, generator=torch.Generator().manual_seed(s))
    report = scheme.embed(model, secret, generator=generator)   # report.model is watermarked
    scheme.verify(report.model, secret)                         # raises WatermarkError if absent
    digest = save_secret(secret, secret_path(keys_dir, commitment(secret)))

See ``docs/watermark.md``.
"""

from __future__ import annotations

from watermark.base import EmbedReport, Verification, WatermarkScheme, WatermarkSecret
from watermark.registry import available_schemes, create_scheme, register_scheme
from watermark.secret import commitment, load_secret, save_secret, secret_path
from watermark.significance import binomial_p_value

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
