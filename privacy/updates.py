"""Model updates as flat vectors: the common currency of clipping, noise and secure aggregation.

Sites never share weights under protection; they share a *payload*:

    payload = [w · Δ, w]      Δ = local − global (flattened, float64), ‖Δ‖₂ ≤ C, w = example weight

Summing payloads (masked, encrypted, or in the clear) and dividing the first
part by the last element gives the example-weighted mean update, exactly what
FedAvg computes, without the coordinator ever needing one site's Δ or w.
Every protection mechanism (``privacy.secagg``, ``privacy.he``, site-level DP)
works on this one representation so they compose.

Notes
-----
Clipping each site's update to a fixed L2 bound is what makes both
fixed-point quantization and site-level DP possible (McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models").
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord

from lifecycle.errors import ConfigurationError, InputValidationError

if TYPE_CHECKING:
    import torch


class UpdateError(InputValidationError):
    """An update does not fit the global model (keys, shapes, or non-finite values)."""


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the arrays in a record, in order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))


def array_view(array: Array) -> np.ndarray:
    """``array.numpy()`` without the copy: a read-only view of the Array's ``.npy`` bytes.

    Flower's ``Array.numpy()`` runs ``np.load`` on a stream, which copies the data into a
    fresh allocation; a vector-sized allocation costs more than the copy (page faults).
    Only the header is parsed (numpy's own parser, no pickle: object dtypes go to
    ``Array.numpy()``, which refuses them), once per distinct header (:func:`_npy_header`:
    numpy parses it with ``ast.literal_eval``, which cost more than the rest for a small
    model's layers); anything unusual falls back to ``Array.numpy()``.
    """
    data = array.data
    if array.stype != "numpy.ndarray" or data[:6] != b"\x93NUMPY" or len(data) < 12:
        return array.numpy()
    # format 1.0: a little-endian uint16 header length at bytes 8-9; 2.0 and 3.0: a uint32 at 8-11
    offset = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    header = _npy_header(bytes(data[:offset]))
    if header is None:
        return array.numpy()  # raises numpy's own error for a malformed array
    shape, fortran_order, dtype = header
    try:
        view = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    except ValueError:
        return array.numpy()
    return view.reshape(shape, order="F" if fortran_order else "C")


@functools.lru_cache(maxsize=1024)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, Fortran order, dtype) of an ``.npy`` file's ``prefix`` (magic and header), or None to fall back."""
    stream = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return None
        shape, fortran_order, dtype = read_header(stream)
    except ValueError:
        return None
    if dtype.hasobject or stream.tell() != len(prefix):
        return None
    return tuple(int(n) for n in shape), bool(fortran_order), dtype


def array_of(value: np.ndarray) -> Array:
    """``Array.from_numpy_ndarray(value)``, byte for byte, with its ``.npy`` header written once per layout.

    Flower writes every array with ``np.save`` into a stream, which formats the header
    (a Python dict literal) each time; a small model's layers cost more in that than in
    their bytes. A C-contiguous array without objects takes the header for its dtype and
    shape from :func:`_npy_prefix`; anything else goes through Flower's own path.
    """
    prefix = _npy_prefix(value.dtype, value.shape) if value.flags.c_contiguous else None
    if prefix is None:
        return Array.from_numpy_ndarray(value)
    return Array(dtype=str(value.dtype), shape=tuple(int(n) for n in value.shape), stype="numpy.ndarray",
                 data=prefix + value.tobytes())


@functools.lru_cache(maxsize=1024)
def _npy_prefix(dtype: np.dtype, shape: tuple[int, ...]) -> bytes | None:
    """The magic and header ``np.save`` writes for a C-ordered array of ``dtype`` and ``shape``.

    None (use ``np.save``) for what format 1.0 cannot hold or what is not plain data: ``np.save``
    picks format 1.0 whenever it can, and objects or user-defined dtypes are never written here.
    """
    if dtype.hasobject or not type(dtype)._legacy:
        return None
    stream = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    try:
        np.lib.format.write_array_header_1_0(stream, header)
    except ValueError:  # a header over 64 KiB: np.save would write format 2.0
        return None
    return stream.getvalue()


def array_record_of(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state_dict)`` through :func:`array_of` (Flower's own path formats every header)."""
    return ArrayRecord({key: array_of(tensor.detach().cpu().numpy()) for key, tensor in state.items()})


def state_dict_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` through :func:`array_view` (one header parse per layout, not per message)."""
    import torch  # only where weights are loaded (this module also serves torch-free code paths)

    return {key: torch.from_numpy(np.array(array_view(record[key]))) for key in record.keys()}


def layout_of(record: ArrayRecord) -> Layout:
    """The layout of ``record``, read from each Array's metadata (nothing is deserialized)."""
    arrays = [record[k] for k in record.keys()]
    return Layout(tuple(record.keys()), tuple(tuple(a.shape) for a in arrays), tuple(str(a.dtype) for a in arrays))


def flatten(record: ArrayRecord) -> tuple[np.ndarray, Layout]:
    """All arrays of ``record`` as one float64 vector, plus the layout to undo it.

    Each array is deserialized once and written straight into the output vector
    (no per-array float64 copies, no concatenation pass).
    """
    keys = tuple(record.keys())
    arrays = [array_view(record[k]) for k in keys]
    layout = Layout(keys, tuple(a.shape for a in arrays), tuple(str(a.dtype) for a in arrays))
    vector, offset = np.empty(layout.size, dtype=np.float64), 0
    for array in arrays:
        vector[offset:offset + array.size] = array.ravel()
        offset += array.size
    return vector, layout


def unflatten(vector: np.ndarray, layout: Layout) -> ArrayRecord:
    """Rebuild an ArrayRecord of ``layout`` from a flat vector."""
    if vector.shape != (layout.size,):
        raise UpdateError(f"vector of {vector.shape} does not fit a layout of {layout.size} values")
    arrays, offset = {}, 0
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        count = int(np.prod(shape))
        arrays[key] = vector[offset:offset + count].reshape(shape).astype(dtype)
        offset += count
    return ArrayRecord({k: _as_array(v) for k, v in arrays.items()})


def _as_array(value: np.ndarray) -> Array:
    return array_of(np.ascontiguousarray(value))


def _delta_into(local: ArrayRecord, global_: ArrayRecord, out: np.ndarray) -> None:
    """Write ``local − global`` (float64) into ``out``, array by array, without temporaries."""
    local_layout, global_layout = layout_of(local), layout_of(global_)
    if local_layout.keys != global_layout.keys or local_layout.shapes != global_layout.shapes:
        raise UpdateError("the update's arrays do not match the global model's names and shapes")
    offset = 0
    for key, shape in zip(local_layout.keys, local_layout.shapes, strict=True):
        mine, theirs = array_view(local[key]), array_view(global_[key])
        if mine.shape != shape or theirs.shape != shape:
            raise UpdateError(f"array '{key}' holds data of another shape than it declares; it was not used")
        target = out[offset:offset + mine.size]
        np.copyto(target, mine.ravel())
        np.subtract(target, theirs.ravel(), out=target)
        offset += mine.size


def model_delta(local: ArrayRecord, global_: ArrayRecord) -> np.ndarray:
    """``local − global`` as a flat vector; refuses mismatched or non-finite updates."""
    delta = np.empty(layout_of(local).size, dtype=np.float64)
    _delta_into(local, global_, delta)
    if not np.all(np.isfinite(delta)):
        raise UpdateError("the update contains NaN or infinite values; it was not sent")
    return delta


def clipped_payload(local: ArrayRecord, global_: ArrayRecord, bound: float, weight: float) -> tuple[np.ndarray, float]:
    """``weighted_payload(clip(model_delta(local, global_), bound), weight)`` in one buffer; and ‖Δ‖₂.

    The same values as the three steps (to within one rounding: the clipping factor and the
    weight are applied as one product), computed in place in the payload vector: one
    allocation instead of five vector-sized temporaries, and one scaling pass instead of two.
    Non-finite entries are detected through the norm (NaN and ±inf make it non-finite) and
    confirmed element-wise only then, instead of in a separate pass.
    """
    if bound <= 0:
        raise ConfigurationError(f"clipping bound must be positive, got {bound}")
    if weight <= 0:
        raise UpdateError(f"an update needs a positive weight, got {weight}")
    payload = np.empty(layout_of(local).size + 1, dtype=np.float64)
    delta = payload[:-1]
    _delta_into(local, global_, delta)
    # Not np.linalg.norm: its BLAS dot hands a 100k vector to a second thread, which costs
    # milliseconds whenever the cores are busy; einsum's own loop stays on this thread.
    squared = float(np.einsum("i,i->", delta, delta))
    if not math.isfinite(squared) and not np.all(np.isfinite(delta)):  # (finite but overflowing: clipped to 0)
        raise UpdateError("the update contains NaN or infinite values; it was not sent")
    norm = math.sqrt(squared)
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    np.multiply(delta, factor * weight, out=delta)
    payload[-1] = float(weight)
    return payload, norm


def clip(delta: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """Scale ``delta`` down to L2 norm ≤ ``bound``; return it and its original norm."""
    if bound <= 0:
        raise ConfigurationError(f"clipping bound must be positive, got {bound}")
    norm = float(np.linalg.norm(delta))
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return delta * factor, norm


def weighted_payload(delta: np.ndarray, weight: float) -> np.ndarray:
    """``[w · Δ, w]``: what a site contributes to the sum."""
    if weight <= 0:
        raise UpdateError(f"an update needs a positive weight, got {weight}")
    return np.concatenate([delta * weight, [float(weight)]])


def apply_payload_sum(total: np.ndarray, global_: ArrayRecord) -> tuple[ArrayRecord, float]:
    """New global model from the *sum* of payloads: ``global + Σ(wΔ) / Σw``; and Σw."""
    global_vec, layout = flatten(global_)
    if total.shape != (layout.size + 1,):
        raise UpdateError(f"aggregate of {total.shape} does not fit a model of {layout.size} values")
    weight = float(total[-1])
    if not weight > 0:
        raise UpdateError("the aggregate carries no weight: no site contributed")
    return unflatten(global_vec + total[:-1] / weight, layout), weight
