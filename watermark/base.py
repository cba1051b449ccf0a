"""The interface every watermark scheme implements, and the values it trades in.

A scheme has three steps, each a method of :class:`WatermarkScheme`:

``generate``
    draw a secret (a :class:`WatermarkSecret`) for a model architecture;
``embed``
    return a watermarked copy of the aggregated model (an :class:`EmbedReport`);
``verify`` / ``measure``
    decide whether a model carries the watermark of a secret (a
    :class:`Verification`). ``verify`` raises :class:`~lifecycle.errors.WatermarkError`
    when it does not, and never returns ``False``; ``measure`` only measures,
    for reports.

Notes
-----
The decision is a one-sided hypothesis test, as in Adi et al. (2018): a model
that never saw the secret agrees with its random labels by chance only, so the
number of agreements is ``Binomial(n, 1/num_classes)`` under the null, and
the watermark is detected when the probability of at least the observed
agreement under that null falls below a threshold.

References
----------
Y. Adi, C. Baum, M. Cisse, B. Pinkas, J. Keshet, "Turning Your Weakness Into a
Strength: Watermarking Deep Neural Networks by Backdooring", USENIX Security 2018.

B. G. A. Tekgul, Y. Xia, S. Marchal, N. Asokan, "WAFFLE: Watermarking in
Federated Learning", SRDS 2021.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn

from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError, WatermarkError

logger = logging.getLogger("fedguard.watermark")


@dataclass(frozen=True, eq=False)
class WatermarkSecret:
    """What the owner keeps to prove a model is theirs.

    Parameters
    ----------
    scheme : str
        Name of the scheme that generated (and can verify) the secret.
    inputs : torch.Tensor
        Trigger inputs, shape ``(n, in_features)``, float32, in RAW feature
        space (what the served model takes). Stored as a private CPU copy.
    labels : torch.Tensor
        Secret labels, shape ``(n,)``, int64.
    params : Mapping[str, Any]
        JSON-serializable facts the verifier needs (e.g. ``num_classes``).

    Notes
    -----
    The secret is compared by identity (``eq=False``): tensors have no
    boolean equality. Compare commitments (:func:`watermark.secret.commitment`)
    to tell whether two secrets are the same.
    """

    scheme: str
    inputs: torch.Tensor
    labels: torch.Tensor
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        inputs = self.inputs.detach().to("cpu", torch.float32).contiguous().clone()
        labels = self.labels.detach().to("cpu", torch.int64).contiguous().clone()
        if inputs.dim() != 2 or labels.dim() != 1 or inputs.shape[0] != labels.shape[0]:
            raise ConfigurationError(
                f"watermark secret needs inputs (n, features) and labels (n,); got "
                f"{tuple(inputs.shape)} and {tuple(labels.shape)}"
            )
        try:
            json.dumps(dict(self.params), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"watermark secret params must be plain JSON values: {exc}") from exc
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def size(self) -> int:
        """Number of trigger inputs."""
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one model against one secret.

    ``verified`` is derived (``p_value < threshold``), never passed in, so it
    cannot contradict the numbers it summarises.
    """

    scheme: str
    trigger_accuracy: float
    correct: int
    n: int
    p_value: float
    threshold: float
    verified: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "verified", self.p_value < self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the ML-BOM, the audit trail or ``--json`` output."""
        return {
            "scheme": self.scheme, "trigger_accuracy": self.trigger_accuracy, "correct": self.correct,
            "n": self.n, "p_value": self.p_value, "threshold": self.threshold, "verified": self.verified,
        }


@dataclass(frozen=True, eq=False)
class EmbedReport:
    """A watermarked model and what embedding it cost.

    Parameters
    ----------
    model : torch.nn.Module
        The watermarked model: a new module; the aggregate passed to
        :meth:`WatermarkScheme.embed` is left untouched.
    steps : int
        Optimisation steps taken.
    trigger_accuracy : float
        Accuracy of ``model`` on the secret's trigger set at the end.
    param_distance : float
        L2 distance between the parameters of ``model`` and the aggregate.
    """

    model: nn.Module
    steps: int
    trigger_accuracy: float
    param_distance: float

    def to_dict(self) -> dict[str, Any]:
        """The numbers of the report (without the model)."""
        return {"steps": self.steps, "trigger_accuracy": self.trigger_accuracy,
                "param_distance": self.param_distance}


class WatermarkScheme(ABC):
    """A way to embed and detect an ownership watermark in a model.

    Implementations are registered with :func:`watermark.registry.register_scheme`,
    which sets :attr:`name`, and created with :func:`watermark.registry.create_scheme`.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def generate(self, model: nn.Module, spec: ModelSpec, *, generator: torch.Generator) -> WatermarkSecret:
        """Draw a new secret for ``model`` (architecture ``spec``); deterministic given ``generator``."""

    @abstractmethod
    def embed(self, model: nn.Module, secret: WatermarkSecret, *, generator: torch.Generator) -> EmbedReport:
        """Return a watermarked copy of ``model``; ``model`` itself is not modified."""

    @abstractmethod
    def measure(self, model: nn.Module, secret: WatermarkSecret) -> Verification:
        """Measure how strongly ``model`` carries ``secret``'s watermark; never raises on absence."""

    def verify(self, model: nn.Module, secret: WatermarkSecret) -> Verification:
        """Check that ``model`` carries ``secret``'s watermark.

        Returns
        -------
        Verification
            The measurement, with ``verified`` true.

        Raises
        ------
        WatermarkError
            If the p-value is not below the threshold: the model does not carry
            this watermark (or it was removed).
        """
        result = self.measure(model, secret)
        if not result.verified:
            logger.warning("watermark not detected: %s", result.to_dict())
            raise WatermarkError(
                f"watermark not detected: trigger accuracy {result.trigger_accuracy:.3f} "
                f"({result.correct}/{result.n}), p-value {result.p_value:.3g} is not below "
                f"{result.threshold:.3g}; this model does not carry the watermark of this secret"
            )
        return result
