"""A served model's signed ONNX export, run by ONNX Runtime: no torch, no training code.

Each loaded model version gets one :class:`OnnxModel`: an ONNX Runtime
``InferenceSession`` on the CPU execution provider, built from the bytes of
``model.onnx`` whose SHA-256 the signed ML-BOM names (so the bytes the session
runs are the bytes that were signed, even if the file changed after the
signature was verified). ``intra_op_threads`` defaults to 1: a request
carries one instance or a few, where a thread pool only adds hand-offs, and
the server scales by workers and replicas (``FEDGUARD_SERVE_ONNX_THREADS``
raises it for large batches).

ONNX Runtime's ``run`` costs ~7 µs for a one-row batch of the default MLP
here, against ~100 µs for a PyTorch forward pass and its dispatch
(``benchmarks/serving.py``); the answers equal PyTorch's logits within the
tolerance the publication checked (:func:`lifecycle.export.tolerance_for`).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from lifecycle.errors import StateError

PROVIDER = "CPUExecutionProvider"
LOAD_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError, ValueError, ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf, ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.RuntimeException,
)
"""What ONNX Runtime raises for a file it cannot load (its own exceptions derive from ``Exception`` only)."""


class ModelRuntime(Protocol):
    """What serving needs from a model: logits for a float32 ``[rows, features]`` batch."""

    @property
    def num_classes(self) -> int: ...

    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxModel:
    """One ONNX Runtime session over a verified ``model.onnx`` (thread-safe: ``run`` may be called concurrently).

    Raises
    ------
    StateError
        The bytes are not the ones the BOM names, ONNX Runtime cannot load
        them, or the graph is not one float32 ``[batch, features]`` input to
        ``[batch, classes]`` outputs.
    """

    def __init__(self, data: bytes, *, sha256: str, num_features: int, ref: str, intra_op_threads: int = 1) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StateError(f"{ref}: model.onnx is not the file its signed BOM names; re-publish the model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ONNX Runtime's warnings go to stderr, not our logger
        try:
            self.session = ort.InferenceSession(data, options, providers=[PROVIDER])
        except LOAD_ERRORS as exc:
            raise StateError(f"{ref}: ONNX Runtime cannot load model.onnx ({exc}); re-publish the model") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 2 or inputs[0].type != "tensor(float)" or shape[1] != num_features:
            raise StateError(f"{ref}: model.onnx takes {[(i.name, i.type, i.shape) for i in inputs]}, not one "
                             f"float [batch, {num_features}] input; re-publish the model")
        out = outputs[0].shape
        if len(out) != 2 or not isinstance(out[1], int):
            raise StateError(f"{ref}: model.onnx outputs shape {out}, not [batch, classes]; re-publish the model")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self._classes = int(out[1])
        self._outputs = [self.output_name]

    @property
    def num_classes(self) -> int:
        """Classes the model scores (its output's second dimension)."""
        return self._classes

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's float32 logits for a float32 ``batch`` (rows × features)."""
        result: np.ndarray = self.session.run(self._outputs, {self.input_name: batch})[0]
        return result


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (as ``torch.softmax(logits.to(float64), dim=1)``)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
