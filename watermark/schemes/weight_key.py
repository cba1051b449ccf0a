"""White-box watermark: a secret projection of chosen weights decodes to a secret bit string (Uchida et al.).

The secret is a random matrix ``X`` (``bits × d``) and a bit string ``b``
(``bits``). The watermarked model's chosen weights ``w`` (a vector of ``d``
numbers, see below) satisfy ``(X·w > 0) == b``. Embedding fine-tunes a copy of
the aggregate with Uchida's regulariser, the binary cross-entropy
``BCE(sigmoid(X·w), b)``, beside terms that keep the model's answers;
verification needs the weights alone: no data, no query to the model.

Notes
-----
* The embedded vector follows Uchida et al. (2017, Sec. 3.1): for a
  convolution weight ``(out, in, kh, kw)`` it is the mean over the output
  channels (``in·kh·kw`` numbers), which makes it invariant to a permutation
  of the filters; for a linear weight ``(out, in)`` it is the flattened
  matrix (``out·in`` numbers). Several layers are concatenated in the order
  named. By default the scheme takes the one weight tensor with the most such
  numbers, so it works for any ``nn.Module`` with a linear or conv layer.
* ``X`` has i.i.d. ``N(0, 1)`` entries (Uchida's "direct" embedding
  matrix) and is drawn independently of every model. For a model that never
  saw the secret, ``w`` is independent of ``X``, so each bit ``X_i·w > 0``
  is a fair coin independent of the others: the number of matching bits is
  ``Binomial(bits, 1/2)`` exactly, and the decision is the same one-sided test
  as the trigger set's (:func:`watermark.significance.binomial_p_value`).
* Embedding is done once, after the last round, on a copy of the aggregate
  (not during training as in the paper, which federated clients would have
  to do with the secret in hand). The task is kept by the same data-free terms
  as the trigger-set scheme: a KL fidelity term to the aggregate's predictions
  on ``N(0, I)`` samples of the standardized input space (Li & Hoiem, 2017)
  when the model standardizes its inputs, and a FedProx proximal penalty
  (Li et al., 2020). The coordinator's held-out set is not used: it is the
  only unbiased measurement of the published accuracy and of the embedding's
  cost, and a model fitted to it would report both optimistically.
* Embedding stops once every bit is right with a margin: ``s_i·X_i·w /
  (‖X_i‖·‖w‖) ≥ margin`` for ``s = 2b − 1`` (a cosine, so the margin does not
  depend on the weights' scale). A margin keeps the bits when a thief
  fine-tunes or prunes the model (``docs/watermark.md``, Robustness).

References
----------
Y. Uchida, Y. Nagai, S. Sakazawa, S. Satoh, "Embedding Watermarks into Deep
Neural Networks", ACM ICMR 2017.

Z. Li, D. Hoiem, "Learning without Forgetting", IEEE TPAMI 40(12), 2017.

T. Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx), MLSys 2020.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from lifecycle.architecture import ModelSpec, Standardize
from lifecycle.errors import ConfigurationError
from watermark.base import EmbedReport, Verification, WatermarkScheme, WatermarkSecret
from watermark.registry import register_scheme
from watermark.significance import binomial_p_value

logger = logging.getLogger("fedguard.watermark")
SHARPNESS = 4.0
"""Slope of the key's logits in score units: a bit ``margin + 1`` deep costs ``BCE(4) ≈ 0.02``."""


@register_scheme("weight-key")
@dataclass(frozen=True)
class WeightKeyScheme(WatermarkScheme):
    """Uchida-style white-box watermark: ``bits`` key bits hidden in a projection of chosen weights.

    Parameters
    ----------
    bits : int
        Length ``T`` of the secret bit string (rows of ``X``).
    layers : tuple of str
        Names of the weight parameters to embed in (``model.named_parameters()``
        names, e.g. ``("1.weight",)``), each of 2 or more dimensions; empty:
        the weight with the most embeddable numbers.
    strength : float
        ``λ``, the weight of the key's binary cross-entropy.
    margin : float
        Embedding stops when every bit's projection is on its side by this
        cosine (see the module notes).
    max_steps : int
        Most Adam steps.
    lr : float
        Adam learning rate.
    proximal_weight : float
        ``mu`` of the proximal penalty ``(mu/2)·||θ - θ_agg||²``.
    anchor_weight : float
        Weight of the data-free fidelity term; 0 disables it. Used only for a
        model whose first layer is ``Standardize`` (anchors are drawn there).
    anchor_batch : int
        Fidelity samples per step.
    threshold : float
        Verification succeeds when the binomial p-value is below it.

    Notes
    -----
    With 128 bits and ``threshold = 1e-6``, the watermark is detected from 92
    matching bits (a bit error rate up to 28 %); an unmarked model matches
    about 64 (p ≈ 0.5).
    """

    bits: int = 128
    layers: tuple[str, ...] = ()
    strength: float = 1.0
    margin: float = 1.0
    max_steps: int = 500
    lr: float = 5e-3
    proximal_weight: float = 0.01
    anchor_weight: float = 10.0
    anchor_batch: int = 256
    threshold: float = 1e-6

    def __post_init__(self) -> None:
        positive = {"bits": self.bits, "strength": self.strength, "max_steps": self.max_steps, "lr": self.lr,
                    "anchor_batch": self.anchor_batch}
        bad = [f"{key}={value}" for key, value in positive.items() if not value > 0]
        bad += [f"{key}={value}" for key, value in {"proximal_weight": self.proximal_weight,
                                                     "anchor_weight": self.anchor_weight,
                                                     "margin": self.margin}.items() if not value >= 0]
        if not 0 < self.threshold < 1:
            bad.append(f"threshold={self.threshold}, margin={self.margin}")
        if 0.5**self.bits >= self.threshold:
            bad.append(f"bits={self.bits} (even all bits right cannot reach p < {self.threshold})")
        if bad:
            raise ConfigurationError(
                f"invalid weight-key parameters: {', '.join(bad)}; bits, steps and rates must be positive, "
                "weights non-negative, margin non-negative, threshold in (0, 1)"
            )
        object.__setattr__(self, "layers", tuple(self.layers))

    def generate(self, model: nn.Module, spec: ModelSpec, *, generator: torch.Generator) -> WatermarkSecret:
        """Draw ``X ~ N(0, 1)^(bits × d)`` and ``bits`` balanced random bits for ``model``'s chosen weights.

        ``spec`` is not needed (the weights say everything) and may describe
        any architecture. The secret's ``inputs`` hold ``X`` and its
        ``labels`` the bits; its params name the layers and ``d``.

        Raises
        ------
        ConfigurationError
            If a named layer is missing or not a weight of 2+ dimensions, or
            the model has no such weight.
        """
        layers = self.layers or (_largest_weight(model),)
        dims = _embedded(model, layers).numel()
        matrix = torch.randn(self.bits, dims, generator=generator)
        key = torch.randperm(self.bits, generator=generator) % 2
        params = {"layers": list(layers), "dims": dims, "bits": self.bits, "num_classes": 2,
                  "projection": "gaussian", "conv": "mean-over-output-channels"}
        return WatermarkSecret(self.name, matrix, key, params)

    def embed(self, model: nn.Module, secret: WatermarkSecret, *, generator: torch.Generator) -> EmbedReport:
        """Fine-tune a copy of ``model`` until its weights decode to the key with the margin; ``model`` is untouched.

        ``generator`` draws the fidelity samples: the result is deterministic
        given it (on one device). ``EmbedReport.trigger_accuracy`` is the
        fraction of key bits recovered.
        """
        layers = self._check_secret(model, secret)
        work = copy.deepcopy(model).requires_grad_(True)
        reference = [p.detach().clone() for p in model.parameters()]
        matrix, key = _placed(model, secret)
        signs = key.to(matrix) * 2 - 1
        row_norms = matrix.norm(dim=1)
        standardize = _first_standardize(model)
        optimizer = torch.optim.Adam(work.parameters(), lr=self.lr)
        steps = 0
        was_training = model.training
        model.eval()
        work.eval()
        try:
            with torch.enable_grad():
                while steps < self.max_steps and not self._done(work, layers, matrix, signs, row_norms):
                    optimizer.zero_grad()
                    scores = _scores(matrix, _embedded(work, layers), row_norms)
                    logits = SHARPNESS * (scores - self.margin * signs)
                    loss = self.strength * F.binary_cross_entropy_with_logits(logits, key.to(logits))
                    loss = loss + self._keep(work, model, reference, standardize, generator)
                    torch.autograd.backward(loss)
                    optimizer.step()
                    steps += 1
        finally:
            model.train(was_training)
        accuracy = self.measure(work, secret).trigger_accuracy
        report = EmbedReport(work, steps, accuracy, _distance(work, reference))
        logger.info("weight-key embedded: %s", report.to_dict())
        return report

    def measure(self, model: nn.Module, secret: WatermarkSecret) -> Verification:
        """Bits decoded from ``model``'s weights alone, and the binomial p-value of that many matches."""
        layers = self._check_secret(model, secret)
        matrix, key = _placed(model, secret)
        with torch.no_grad():
            decoded = (matrix @ _embedded(model, layers) > 0).to(key.dtype)
        correct = int((decoded == key).sum())
        p_value = binomial_p_value(correct, secret.size, 0.5)
        return Verification(self.name, correct / secret.size, correct, secret.size, p_value, self.threshold)

    def _done(self, work: nn.Module, layers: tuple[str, ...], matrix: torch.Tensor, signs: torch.Tensor,
              row_norms: torch.Tensor) -> bool:
        """Every bit on its side by at least ``margin`` (cosine between ``X_i`` and ``w``)."""
        with torch.no_grad():
            margins = signs * _scores(matrix, _embedded(work, layers), row_norms)
        return bool(margins.min() >= self.margin) and bool(margins.min() > 0)

    def _keep(self, work: nn.Module, aggregate: nn.Module, reference: list[torch.Tensor],
              standardize: Standardize | None, generator: torch.Generator) -> torch.Tensor:
        """Fidelity KL to the aggregate on standardized-space anchors + proximal penalty (zero if both off)."""
        loss = torch.zeros(())
        if self.anchor_weight > 0 and standardize is not None:
            z = torch.randn(self.anchor_batch, standardize.mean.shape[0], generator=generator)
            anchors = (z.to(standardize.mean) * standardize.scale + standardize.mean)
            with torch.no_grad():
                target = aggregate(anchors).log_softmax(dim=1)
            fidelity = F.kl_div(work(anchors).log_softmax(dim=1), target, log_target=True, reduction="batchmean")
            loss = loss + self.anchor_weight * fidelity
        if self.proximal_weight > 0:
            squared = sum((p - r).pow(2).sum() for p, r in zip(work.parameters(), reference, strict=True))
            loss = loss + 0.5 * self.proximal_weight * squared
        return loss

    def _check_secret(self, model: nn.Module, secret: WatermarkSecret) -> tuple[str, ...]:
        """The secret's layers, or raise if this scheme cannot use it with ``model``."""
        layers = secret.params.get("layers")
        if secret.scheme != self.name or not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigurationError(
                f"secret of scheme '{secret.scheme}' cannot be used by '{self.name}'; create the scheme named "
                "in the secret"
            )
        names = tuple(str(layer) for layer in layers)
        dims = _embedded(model, names).numel()
        if dims != secret.inputs.shape[1]:
            raise ConfigurationError(
                f"the secret projects {secret.inputs.shape[1]} weights of {', '.join(names)} but this model has "
                f"{dims}: it is another architecture, which cannot carry this watermark"
            )
        return names


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters of 2 or more dimensions (linear and conv weights), by name."""
    return {name: p for name, p in model.named_parameters() if p.dim() >= 2}


def _flat(weight: torch.Tensor) -> torch.Tensor:
    """Uchida's embedded vector of one weight: conv → mean over output channels; linear → flattened."""
    return weight.mean(dim=0).flatten() if weight.dim() > 2 else weight.flatten()


def _largest_weight(model: nn.Module) -> str:
    """Name of the weight with the most embeddable numbers (the first such, on a tie)."""
    weights = _weights(model)
    if not weights:
        raise ConfigurationError(
            "weight-key watermarking needs a model with a linear or convolution weight; this one has none"
        )
    return max(weights, key=lambda name: _flat(weights[name]).numel())


def _embedded(model: nn.Module, layers: tuple[str, ...]) -> torch.Tensor:
    """The concatenated embedded vectors of ``layers`` (differentiable)."""
    weights = _weights(model)
    missing = [name for name in layers if name not in weights]
    if missing:
        raise ConfigurationError(
            f"weight-key layer(s) {', '.join(missing)} are not weights of 2+ dimensions of this model; "
            f"choose from {', '.join(weights) or 'none'}"
        )
    return torch.cat([_flat(weights[name]) for name in layers])


def _scores(matrix: torch.Tensor, weights: torch.Tensor, row_norms: torch.Tensor) -> torch.Tensor:
    """``X_i·w / (‖X_i‖·‖w‖) · √d``: each bit's projection in standard deviations of a random model's.

    For ``w`` independent of ``X`` each score is about ``N(0, 1)``, whatever the
    weights' scale and ``d``; the key bit is its sign.
    """
    cosines: torch.Tensor = (matrix @ weights) / (row_norms * weights.norm().clamp_min(1e-12))
    return cosines * math.sqrt(weights.numel())


def _first_standardize(model: nn.Module) -> Standardize | None:
    """The model's first child if it is a ``Standardize`` layer (anchors are drawn behind it)."""
    first = next(iter(model.children()), None)
    return first if isinstance(first, Standardize) else None


def _placed(model: nn.Module, secret: WatermarkSecret) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` in the model's dtype and device, and the key bits on that device."""
    parameter = next(model.parameters())
    return secret.inputs.to(parameter), secret.labels.to(parameter.device)


def _distance(model: nn.Module, reference: list[torch.Tensor]) -> float:
    """L2 distance between ``model``'s parameters and ``reference``."""
    with torch.no_grad():
        squared = sum(float((p - r).pow(2).sum()) for p, r in zip(model.parameters(), reference, strict=True))
    return math.sqrt(squared)
