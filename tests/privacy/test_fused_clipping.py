"""Fused per-example clipping equals Opacus' per-sample clipping, with the same noise and accounting."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lifecycle.architecture import ModelSpec, build_model
from privacy.dp_sgd import FUSED, OPACUS_EW, DPPlan, PrivacyPlanError, clipping_path, make_private
from privacy.fused_clipping import FusedClippingError, FusedClippingModule, FusedDPOptimizer, unsupported_layers

SIGMA, CLIP = 1.3, 0.5


def _plan(n: int, batch: int, *, sigma: float = SIGMA, clip: float = CLIP) -> DPPlan:
    steps = math.ceil(n / batch)
    return DPPlan(3.0, 1e-5, clip, 1 / steps, steps, sigma)


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    deeper = nn.Sequential(  # several widths, a bias-free layer, other per-example activations
        nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 6, bias=False), nn.GELU(), nn.Flatten(), nn.Linear(6, 3),
    )
    return [build_model(ModelSpec(30, 2, (32,))), deeper]


def _batch(model: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    x = torch.randn(n, first.in_features, generator=generator) * torch.rand(n, 1, generator=generator) * 4
    return x, torch.randint(0, last.out_features, (n,), generator=generator)


def _opacus_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        clip: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Σ_i min(1, C/(‖∇_i‖+1e-6)) ∇_i from Opacus' per-sample gradients (hooks), and the per-example norms."""
    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="mean")
    nn.functional.cross_entropy(gsm(x), y).backward()
    samples = [p.grad_sample for p in gsm.parameters()]
    norms = torch.stack([s.reshape(len(s), -1).norm(dim=1) for s in samples], dim=1).norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("i,i...", factor, s) for s in samples], norms


def _fused_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    clipping = FusedClippingModule(model)
    nn.functional.cross_entropy(clipping(x), y).backward()
    clipping.write_noised_grads(max_grad_norm=clip, noise_std=0.0, scale=1.0, mean_loss=True,
                                noise=lambda std, shape: torch.zeros(shape))
    return [p.grad for p in model.parameters()]  # type: ignore[misc]


@pytest.mark.parametrize("model_index", [0, 1])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fused_clipped_sum_equals_opacus_per_sample_clipping(model_index: int, seed: int) -> None:
    model = _models()[model_index]
    x, y = _batch(model, 24, seed)
    _, norms = _opacus_clipped_sum(model, x, y, 1.0)
    clip = float(norms.median())  # binds for about half of the examples, not for the others
    expected, norms = _opacus_clipped_sum(model, x, y, clip)
    assert (norms > clip).sum() >= 5 and (norms < clip).sum() >= 5
    for fused, reference in zip(_fused_clipped_sum(model, x, y, clip), expected, strict=True):
        assert fused.shape == reference.shape
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def _one_step(model: nn.Module, clipping: str, x: torch.Tensor, y: torch.Tensor,
              noise_seed: int) -> tuple[nn.Module, torch.optim.Optimizer, PrivacyEngine]:
    model = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(*_batch(model, 64, 99)), batch_size=32)
    private, optimizer, _, engine = make_private(
        model, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9), loader, _plan(64, 32),
        clipping=clipping, noise_generator=torch.Generator().manual_seed(noise_seed),
    )
    optimizer.zero_grad()
    nn.functional.cross_entropy(private(x), y).backward()
    optimizer.step()
    return model, optimizer, engine


def test_full_step_matches_opacus_noise_included() -> None:
    """Same start, batch and noise generator seed: Opacus' step and the fused step give the same weights."""
    model = _models()[0]
    x, y = _batch(model, 32, 5)
    reference, ref_opt, ref_engine = _one_step(model, "opacus", x, y, noise_seed=11)
    fused, fused_opt, fused_engine = _one_step(model, "fused", x, y, noise_seed=11)
    assert (clipping_path(ref_opt), clipping_path(fused_opt)) == (OPACUS_EW, FUSED)
    for a, b, start in zip(reference.parameters(), fused.parameters(), model.parameters(), strict=True):
        assert not torch.equal(a, start)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert ref_engine.accountant.history == fused_engine.accountant.history == [(SIGMA, 0.5, 1)]
    assert isinstance(fused_opt, FusedDPOptimizer) and fused_opt.expected_batch_size == ref_opt.expected_batch_size


def test_noise_std_is_sigma_c_over_expected_batch() -> None:
    """Per coordinate, p.grad − (clipped sum)/B has std σ·C/B (B = Opacus' expected batch size)."""
    model = _models()[0]
    x, y = _batch(model, 32, 6)
    exact = [g / 32 for g in _fused_clipped_sum(model, x, y, CLIP)]
    model = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(*_batch(model, 64, 99)), batch_size=32)
    private, optimizer, _, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0), loader, _plan(64, 32),
                                      noise_generator=torch.Generator().manual_seed(0))
    assert optimizer.expected_batch_size == 32
    noise = []
    for _ in range(40):  # 40 × 1,122 coordinates
        optimizer.zero_grad()
        nn.functional.cross_entropy(private(x), y).backward()
        optimizer.step()
        noise += [(p.grad - e).flatten() for p, e in zip(model.parameters(), exact, strict=True)]  # type: ignore[operator]
    sample = torch.cat(noise)
    expected_std = SIGMA * CLIP / 32
    assert abs(float(sample.std()) / expected_std - 1) < 0.02  # sampling error of the std ≈ 0.3%
    assert abs(float(sample.mean())) < 4 * expected_std / math.sqrt(len(sample))


def test_empty_poisson_batch_is_a_pure_noise_step_as_in_opacus() -> None:
    """Opacus' DPOptimizer on an empty batch: zero clipped sum, σC noise / expected batch, one accountant step."""
    model = _models()[0]
    x, y = _batch(model, 64, 7)
    empty_x, empty_y = x[:0], y[:0]
    reference = copy.deepcopy(model)
    engine = PrivacyEngine()
    private, optimizer, _ = engine.make_private(
        module=reference, optimizer=torch.optim.SGD(reference.parameters(), lr=1.0, momentum=0.9),
        data_loader=DataLoader(TensorDataset(x, y), batch_size=32), noise_multiplier=SIGMA, max_grad_norm=CLIP,
        poisson_sampling=True, grad_sample_mode="hooks",  # ew refuses a batch of 0; hooks is Opacus' default
        noise_generator=torch.Generator().manual_seed(3),
    )
    optimizer.zero_grad()
    nn.functional.cross_entropy(private(empty_x), empty_y).backward()
    optimizer.step()
    fused, _, fused_engine = _one_step(model, "fused", empty_x, empty_y, noise_seed=3)
    for a, b in zip(reference.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)
    assert engine.accountant.history == fused_engine.accountant.history == [(SIGMA, 0.5, 1)]


def test_unsupported_layer_falls_back_to_opacus_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2))
    assert unsupported_layers(model) == ["1: LayerNorm"]
    loader = DataLoader(TensorDataset(torch.randn(40, 5), torch.arange(40) % 2), batch_size=8)
    with caplog.at_level(logging.INFO, logger="fedguard.privacy"):
        _, optimizer, _, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, _plan(40, 8))
    assert clipping_path(optimizer) == OPACUS_EW
    assert "fused clipping does not support 1: LayerNorm" in caplog.text
    with pytest.raises(PrivacyPlanError, match="LayerNorm"):
        make_private(copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.1), loader, _plan(40, 8),
                     clipping="fused")


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: (lin := nn.Linear(3, 3), nn.Sequential(lin, nn.ReLU(), lin))[1], "2: Linear (used twice)"),
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, affine=False)), "1: BatchNorm1d"),
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=0)), "1: Softmax"),  # mixes examples
        (lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True)), "1: ReLU (in place)"),
    ],
)
def test_layers_that_break_the_identity_are_refused(build: Any, problem: str) -> None:
    model = build()
    assert problem in unsupported_layers(model)
    with pytest.raises(FusedClippingError, match="fused clipping supports only"):
        FusedClippingModule(model)


def test_misuse_at_run_time_raises() -> None:
    model = _models()[0]
    clipping = FusedClippingModule(model)
    x, y = _batch(model, 8, 1)

    def write() -> None:
        clipping.write_noised_grads(max_grad_norm=1.0, noise_std=0.0, scale=1.0, mean_loss=True,
                                    noise=lambda std, shape: torch.zeros(shape))

    for _ in range(2):  # two forward/backward passes before one step: gradient accumulation
        nn.functional.cross_entropy(clipping(x), y).backward()
    with pytest.raises(FusedClippingError, match="exactly one training forward pass"):
        write()
    clipping(x)
    with pytest.raises(FusedClippingError, match="call backward"):
        write()
    with pytest.raises(FusedClippingError, match="2-D inputs"):
        clipping(torch.randn(2, 4, 30))
    clipping.clear()
    with torch.no_grad():
        clipping(x)  # evaluation is not kept
    clipping.eval()
    clipping(x)
    assert not clipping._kept
