"""The signed serving format: the published model exported to ONNX and checked against PyTorch.

At publication the final (watermarked) model is exported once, with PyTorch's
TorchScript-based exporter (``dynamo=False``: it needs no ``onnxscript``,
prints nothing and takes ~0.06 s for the default MLP, against ~4 s for the
``torch.export`` path), at the pinned opset :data:`ONNX_OPSET`, with a
dynamic batch axis. The export is then *run* with ONNX Runtime on the
held-out set and its logits compared with PyTorch's: a difference above
:data:`PARITY_TOLERANCE`, or above :data:`PARITY_RELATIVE_TOLERANCE` of the
largest logit for a model whose logits are large, refuses the publication
(:class:`ExportError`), so the model that serving runs is, to float32
rounding, the model that was evaluated, watermarked and gated. The relative
bound exists because float32 rounding scales with the numbers rounded: two
correct kernels that sum a dot product in different orders differ by a few
units in the last place of the *logit*, and a model trained under site-level
DP had logits large enough (hundreds) for that to reach 5e-5 and 8e-5. An
export that is not the trained model differs by the order of the logits
themselves, five orders of magnitude above either bound. The difference, the opset, the file's
SHA-256 and the ONNX and ONNX Runtime versions go into the ML-BOM
(:func:`lifecycle.bom.read_lineage`'s ``serving_format``), and ``model.onnx``
lies in the model directory, so the signature covers it like every other file.

Serving then needs only ONNX Runtime and numpy: no torch, no training code
(DESIGN.md §4, "the model is served from its signed ONNX export").

This module imports torch, ONNX and ONNX Runtime only inside its functions,
so that importing :mod:`lifecycle` stays light.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle.artifacts import ONNX_NAME, file_sha256
from lifecycle.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

ONNX_OPSET = 17
"""The ONNX opset every published model is exported at (ONNX Runtime ≥ 1.14 runs it; one constant, one place)."""
INPUT_NAME = "input"
"""The exported graph's one input: a float32 ``[batch, features]`` matrix of raw (unstandardized) features."""
OUTPUT_NAME = "logits"
"""The exported graph's output: float32 ``[batch, classes]`` logits (serving applies the softmax)."""
BATCH_AXIS = "batch"
PARITY_TOLERANCE = 1e-5
"""Largest absolute difference allowed between ONNX Runtime's and PyTorch's logits on the parity set."""
PARITY_RELATIVE_TOLERANCE = 1e-6
"""...or, where larger, this fraction of the largest |logit| on the parity set (float32 keeps ~7 digits)."""
PROBE_ROWS = 256
"""Rows of the fixed probe batch used when a publication brings no held-out set."""
FORMAT = "onnx"


@dataclass(frozen=True)
class OnnxExport:
    """What the export and its parity check established (the BOM's ``serving_format`` section)."""

    file: str
    sha256: str
    opset: int
    max_abs_diff: float
    tolerance: float
    rows: int
    logit_scale: float
    parity_set: str
    onnx_version: str
    onnxruntime_version: str

    def to_dict(self) -> dict[str, Any]:
        """The section as it is signed into the ML-BOM."""
        return {
            "format": FORMAT, "file": self.file, "sha256": self.sha256, "opset": self.opset,
            "input": INPUT_NAME, "output": OUTPUT_NAME,
            "parity": {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "rows": self.rows,
                       "set": self.parity_set, "logit_scale": self.logit_scale},
            "onnx": self.onnx_version, "onnxruntime": self.onnxruntime_version,
        }


def export_onnx(model: nn.Module, num_features: int, path: Path) -> None:
    """Write ``model`` (a copy, on the CPU, in eval mode) to ``path`` as ONNX at :data:`ONNX_OPSET`.

    Raises
    ------
    ExportError
        PyTorch cannot export the module (an operator ONNX lacks at this opset).
    """
    import torch

    module = copy.deepcopy(model).to("cpu").eval()
    example = torch.zeros(1, num_features, dtype=torch.float32)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that torch.export is the new default; it is chosen on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
            )
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ExportError(f"cannot export the model to ONNX opset {ONNX_OPSET}: {exc}; "
                          "use operators that ONNX supports at this opset") from exc


def probe_inputs(num_features: int) -> np.ndarray:
    """A fixed batch of :data:`PROBE_ROWS` standard-normal rows (seed 0), for a publication without held-out data."""
    return np.random.default_rng(0).standard_normal((PROBE_ROWS, num_features)).astype(np.float32)


def tolerance_for(logit_scale: float) -> float:
    """The parity bound for logits up to ``logit_scale`` in magnitude (module docstring)."""
    return max(PARITY_TOLERANCE, PARITY_RELATIVE_TOLERANCE * logit_scale)


def parity(model: nn.Module, path: Path, inputs: np.ndarray) -> tuple[float, float]:
    """Largest absolute difference between PyTorch's and ONNX Runtime's logits on ``inputs``, and the largest |logit|.

    The difference is ``inf`` when either side gives a non-finite logit or the shapes differ.

    Raises
    ------
    ExportError
        ONNX Runtime cannot load or run the export.
    """
    import onnxruntime as ort
    import torch

    batch = np.ascontiguousarray(inputs, dtype=np.float32)
    module = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors derive from Exception only; named, not hidden
        raise ExportError(f"ONNX Runtime cannot run the export: {type(exc).__name__}: {exc}; this is a fedguard "
                          "bug or an operator the runtime lacks") from exc
    scale = float(np.abs(expected).max(initial=0.0)) if np.isfinite(expected).all() else float("inf")
    if got.shape != expected.shape or not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return float("inf"), scale
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0)), scale


def export_checked(
    model: nn.Module, num_features: int, model_dir: Path, held_out: np.ndarray | None = None
) -> OnnxExport:
    """Export ``model`` to ``model_dir/model.onnx`` and check it against PyTorch on ``held_out``.

    ``held_out`` are the held-out set's feature rows (the coordinator's test
    split); without them, a fixed probe batch (:func:`probe_inputs`) is used
    and the BOM says so.

    Raises
    ------
    ExportError
        The module cannot be exported, or ONNX Runtime's logits differ from
        PyTorch's by more than :func:`tolerance_for` their scale (the difference is named);
        the publication must not go on.
    """
    import onnx
    import onnxruntime as ort

    path = model_dir / ONNX_NAME
    export_onnx(model, num_features, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX export does not validate: {exc}; this is a fedguard bug") from exc
    inputs, kind = (held_out, "held-out") if held_out is not None and len(held_out) else (
        probe_inputs(num_features), "probe")
    if inputs.ndim != 2 or inputs.shape[1] != num_features:
        raise ExportError(f"the parity set has shape {tuple(inputs.shape)}; expected rows of {num_features} "
                          "features: pass the held-out set's features")
    difference, scale = parity(model, path, inputs)
    tolerance = tolerance_for(scale)
    if not difference <= tolerance:
        raise ExportError(
            f"ONNX Runtime's logits differ from PyTorch's by {difference:.3g} on the {kind} set "
            f"(tolerance {tolerance:.3g} for logits up to {scale:.3g}, opset {ONNX_OPSET}): the exported model is "
            "not the trained one; publication refused"
        )
    return OnnxExport(
        file=ONNX_NAME, sha256=file_sha256(path), opset=ONNX_OPSET, max_abs_diff=difference,
        tolerance=tolerance, rows=int(len(inputs)), logit_scale=scale, parity_set=kind,
        onnx_version=str(onnx.__version__), onnxruntime_version=str(ort.__version__),
    )
