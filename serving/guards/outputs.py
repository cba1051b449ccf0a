"""Hardened prediction outputs: labels by default, rounded scores only where configured.

Per model (``FEDGUARD_SERVE_OUTPUTS``), a deployment answers in one of three
modes:

===============  ===========================================================
``label``        the winning label per instance (the default)
``top-k``        the label, plus the ``top_k`` most likely labels with scores
``probabilities`` the label, plus every class's probability (``classes`` gives
                 their order)
===============  ===========================================================

Scores are softmax probabilities rounded to ``precision`` decimals (2 unless
configured); full precision is sent only when ``precision`` is explicitly
``null``. Ranking happens before rounding, so top-k order is the model's own;
rounded probabilities need not sum to exactly 1.

Notes
-----
Confidence scores are what membership inference (Shokri et al., "Membership
Inference Attacks against Machine Learning Models", IEEE S&P 2017) and
equation-solving model extraction (Tramèr et al., USENIX Security 2016) feed
on; both papers evaluate returning only the label, returning only the top
classes, and rounding confidences as countermeasures. Labels-only is the
strongest of the three and hence the default; rounding and top-k reduce, but
do not remove, the leak.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lifecycle.errors import ConfigurationError
from serving.models import ServedModel
from serving.runtime import softmax64
from serving.settings import OutputPolicy, ServingSettings


def _round(value: float, precision: int | None) -> float:
    return value if precision is None else round(value, precision)


def check_policies(settings: ServingSettings, models: dict[str, ServedModel]) -> None:
    """Refuse a ``top_k`` larger than the model's number of classes.

    Raises
    ------
    ConfigurationError
        Naming the model and its number of classes.
    """
    for name, model in models.items():
        policy = settings.output_policy(name)
        classes = model.num_classes
        if policy.output_mode == "top-k" and policy.top_k > classes:
            raise ConfigurationError(
                f"outputs.{name}.top_k is {policy.top_k} but model '{name}' has {classes} classes; "
                f"set top_k between 1 and {classes} in FEDGUARD_SERVE_OUTPUTS"
            )


def shape_output(
    model: ServedModel, batch: np.ndarray, policy: OutputPolicy, logits: np.ndarray | None = None
) -> dict[str, Any]:
    """The response fields for ``batch`` under ``policy``: ``predictions`` and the mode's extras.

    ``logits`` are the model's outputs for ``batch`` when the caller already
    computed them (the predict route does, once, and hands them to the drift
    and extraction monitors too). Labels are their argmax (softmax is
    monotone); the float64 softmax runs only for a mode that returns scores,
    which never leave unrounded.
    """
    if logits is None:
        if policy.output_mode == "label":
            return {"predictions": model.predict(batch)}
        logits = model.logits(batch)
    names = model.class_names()
    labels = [names[int(c)] for c in logits.argmax(axis=1).tolist()]
    fields: dict[str, Any] = {"predictions": labels}
    if policy.output_mode == "label":
        return fields
    probabilities = softmax64(logits)
    if policy.output_mode == "top-k":
        indices = np.argsort(-probabilities, axis=1, kind="stable")[:, : policy.top_k]  # ties: lower class first
        scores = np.take_along_axis(probabilities, indices, axis=1)
        fields["top_k"] = [
            [{"label": names[int(i)], "score": _round(float(p), policy.precision)}
             for p, i in zip(row_p, row_i, strict=True)]
            for row_p, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]
    else:
        fields["classes"] = names
        fields["probabilities"] = [[_round(float(p), policy.precision) for p in row] for row in probabilities.tolist()]
    return fields
