"""Tensors of the Open Inference Protocol v2, and the map between them and fedguard's hardened answer.

A fedguard model takes one input, ``input``: datatype ``FP32``, shape
``[-1, n_features]`` (a batch of instances, features in the order of the
signed schema). Its outputs are exactly the fields the v1 route returns under
the model's output policy (:mod:`serving.guards.outputs`), as tensors, so that
no protocol leaks more than another:

=================  =========================  ===============  ============================
output             datatype                   shape            when
=================  =========================  ===============  ============================
``label``          BYTES (label names), or    ``[n]``          always (v1 ``predictions``)
                   INT64 (class indices)
``top_k_labels``   as ``label``               ``[n, k]``       output mode ``top-k``
``top_k_scores``   FP64 (rounded)             ``[n, k]``       output mode ``top-k``
``probabilities``  FP64 (rounded)             ``[n, C]``       output mode ``probabilities``
``classes``        as ``label``               ``[C]``          output mode ``probabilities``
=================  =========================  ===============  ============================

Scores are the v1 route's rounded values, sent as FP64 so they arrive
unchanged (a float32 would turn 0.82 into 0.8199999928).

Request data arrive as JSON numbers (flat row-major, or nested rows), as raw
little-endian bytes (gRPC ``raw_input_contents``; REST with the binary tensor
extension), or as gRPC ``fp32_contents``; each path ends in
:class:`InferRequest`, whose ``instances`` go through the very guards of v1.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.models import ServedModel
from serving.protocols.v2.errors import V2InputError
from serving.settings import OutputPolicy

INPUT = "input"
"""The name of a fedguard model's one input tensor (also its ONNX input's name)."""
FP32, FP64, INT64, BYTES = "FP32", "FP64", "INT64", "BYTES"
_NUMPY = {FP64: "<f8", INT64: "<i8"}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, datatype and shape (``-1``: a variable dimension), as the metadata lists it."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OutputTensor:
    """One output of an answer: ``data`` flat, row-major (``str`` for BYTES, ``int`` or ``float`` otherwise)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any]

    def to_bytes(self) -> bytes:
        """The raw encoding: little-endian numbers, or for BYTES a 4-byte length before each element."""
        if self.datatype == BYTES:
            parts = [str(item).encode() for item in self.data]
            return b"".join(struct.pack("<I", len(part)) + part for part in parts)
        return np.asarray(self.data, dtype=_NUMPY[self.datatype]).tobytes()


@dataclass(frozen=True)
class InferRequest:
    """A v2 inference request, decoded: the instances, the outputs asked for, and the parameters fedguard reads."""

    instances: np.ndarray  # float64, [n, features] as sent; the model's schema is checked by the guards
    outputs: tuple[str, ...] = ()  # empty: every output the model's policy allows
    binary_outputs: frozenset[str] = field(default_factory=frozenset)  # REST binary tensor extension
    binary_default: bool = False  # REST parameters.binary_data_output
    request_id: str = ""
    subject_id: str | None = None


def label_type(model: ServedModel) -> str:
    """BYTES for a model whose schema names its labels, INT64 for one answering class indices."""
    return BYTES if model.schema.labels else INT64


def input_spec(model: ServedModel) -> TensorSpec:
    """The input tensor a model takes."""
    return TensorSpec(INPUT, FP32, (-1, model.num_features))


def output_specs(model: ServedModel, policy: OutputPolicy) -> list[TensorSpec]:
    """The outputs ``model`` answers with under ``policy``, in answer order."""
    labels = label_type(model)
    specs = [TensorSpec("label", labels, (-1,))]
    if policy.output_mode == "top-k":
        specs += [TensorSpec("top_k_labels", labels, (-1, policy.top_k)),
                  TensorSpec("top_k_scores", FP64, (-1, policy.top_k))]
    elif policy.output_mode == "probabilities":
        specs += [TensorSpec("probabilities", FP64, (-1, model.num_classes)),
                  TensorSpec("classes", labels, (model.num_classes,))]
    return specs


def check_requested(model: ServedModel, policy: OutputPolicy, requested: Sequence[str]) -> None:
    """Refuse an output the model does not answer with under its policy, before anything is scored.

    Raises
    ------
    V2InputError
        Naming the output and the ones available.
    """
    available = [spec.name for spec in output_specs(model, policy)]
    for name in requested:
        if name not in available:
            raise V2InputError(f"model '{model.name}' has no output '{name[:64]}' (output mode "
                               f"'{policy.output_mode}'); it answers with: {', '.join(available)}")


def answer_tensors(model: ServedModel, fields: Mapping[str, Any], requested: Sequence[str]) -> list[OutputTensor]:
    """The v2 outputs of a v1 answer's ``fields`` (all, or those ``requested``, in that order)."""
    labels = label_type(model)
    predictions = list(fields["predictions"])
    tensors = [OutputTensor("label", labels, (len(predictions),), predictions)]
    if "top_k" in fields:
        rows = fields["top_k"]
        k = len(rows[0]) if rows else 0
        tensors += [
            OutputTensor("top_k_labels", labels, (len(rows), k), [item["label"] for row in rows for item in row]),
            OutputTensor("top_k_scores", FP64, (len(rows), k), [item["score"] for row in rows for item in row]),
        ]
    if "probabilities" in fields:
        rows = fields["probabilities"]
        classes = list(fields["classes"])
        tensors += [
            OutputTensor("probabilities", FP64, (len(rows), len(classes)), [p for row in rows for p in row]),
            OutputTensor("classes", labels, (len(classes),), classes),
        ]
    if not requested:
        return tensors
    by_name = {tensor.name: tensor for tensor in tensors}
    return [by_name[name] for name in requested]


def instances_from_json(name: object, datatype: object, shape: object, data: object) -> np.ndarray:
    """The ``[n, features]`` float64 instances of one JSON input tensor.

    ``data`` is flat (row-major) or nested rows; every value must be a JSON
    number (``true`` or ``"1.5"`` are refused, not coerced, as v1 refuses them).

    Raises
    ------
    V2InputError
        A wrong name, datatype or shape, a value count that does not fill the
        shape, or a value that is not a number; the message says which.
    """
    rows, cols = check_header(name, datatype, shape)
    if not isinstance(data, list):
        raise V2InputError(f"input '{INPUT}' needs 'data': a list of {rows * cols} numbers (row-major) or "
                           f"{rows} lists of {cols}")
    if data and all(isinstance(row, list) for row in data):
        if len(data) != rows or any(len(row) != cols for row in data):
            raise V2InputError(f"input '{INPUT}' data are nested as {len(data)} rows, which does not match its "
                               f"shape [{rows}, {cols}]")
        flat: list[Any] = [value for row in data for value in row]
    else:
        flat = data
    if len(flat) != rows * cols:
        raise V2InputError(f"input '{INPUT}' holds {len(flat)} values but its shape [{rows}, {cols}] needs "
                           f"{rows * cols}")
    for index, value in enumerate(flat):
        if type(value) is not float and type(value) is not int:
            raise V2InputError(f"instance {index // cols} value {index % cols} of input '{INPUT}' is not a "
                               "number; send JSON numbers only")
    return np.asarray(flat, dtype=np.float64).reshape(rows, cols)


def instances_from_bytes(name: object, datatype: object, shape: object, raw: bytes) -> np.ndarray:
    """The instances of one input sent as raw little-endian FP32 bytes (``[n, features]``, row-major).

    Raises
    ------
    V2InputError
        A wrong name, datatype or shape, or a byte count that does not fill the shape.
    """
    rows, cols = check_header(name, datatype, shape)
    if len(raw) != rows * cols * 4:
        raise V2InputError(f"input '{INPUT}' carries {len(raw)} bytes but its shape [{rows}, {cols}] of FP32 "
                           f"needs {rows * cols * 4}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(rows, cols)


def check_header(name: object, datatype: object, shape: object) -> tuple[int, int]:
    """The ``(rows, columns)`` of an input tensor whose name, datatype and 2-D shape are fedguard's.

    Raises
    ------
    V2InputError
        Saying what the input must be.
    """
    if name != INPUT:
        shown = name[:64] if isinstance(name, str) else name
        raise V2InputError(f"unknown input {shown!r}; a fedguard model takes one input named '{INPUT}' "
                           "(see the model's metadata)")
    if datatype != FP32:
        shown = datatype[:16] if isinstance(datatype, str) else datatype
        raise V2InputError(f"input '{INPUT}' has datatype {shown!r}; send FP32")
    if (not isinstance(shape, Sequence) or len(shape) != 2
            or not all(type(d) is int for d in shape) or not all(d >= 1 for d in shape)):
        raise V2InputError(f"input '{INPUT}' has shape {_shown(shape)}; send [batch, features] with both "
                           "at least 1 (the model's metadata gives its number of features)")
    return int(shape[0]), int(shape[1])


def _shown(shape: object) -> str:
    return repr(list(shape)[:8]) if isinstance(shape, Sequence) and not isinstance(shape, str) else repr(shape)[:32]
