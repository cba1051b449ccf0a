"""Reading a model's ML-BOM: the one API through which fedguard reads lineage.

The BOM is a CycloneDX 1.6 document (:mod:`lifecycle.bom.document` writes it).
fedguard's lineage lives in it where CycloneDX tools accept it:

- the model is ``metadata.component`` (type ``machine-learning-model``, bom-ref
  ``fedguard:model``); its properties ``fedguard:lineage:<section>`` hold the
  lineage sections as compact JSON (architecture, feature schema, training,
  watermark, metrics), exact to the bit, beside readable ``fedguard:...``
  properties that spell the main facts (run id, rounds, DP, secure aggregation,
  watermark) for people and tools;
- each site's training data is a ``data`` component (bom-ref
  ``fedguard:site:<site>``) whose SHA-256 hash is the site's data manifest and
  whose ``fedguard:site:*`` properties are the registry's row for that site;
- the training data's reference statistics, when collected, are a ``data``
  component (bom-ref ``fedguard:reference``) carrying them as a JSON attachment.

Consumers never parse that layout themselves: :func:`read_lineage` returns the
dictionary that the ``fedguard`` top-level key of earlier, CycloneDX-shaped
BOMs held (which it still reads, so models published before keep loading).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle.bom.environment import MAIN_DEPENDENCIES, canonical_name
from lifecycle.description import DataSchema, ModelSpec
from lifecycle.errors import StateError

BOM_NAME = "bom.json"
MODEL_REF = "fedguard:model"
REFERENCE_REF = "fedguard:reference"
SITE_REF_PREFIX = "fedguard:site:"
LINEAGE_PREFIX = "fedguard:lineage:"
SECTIONS = {"architecture": "architecture", "feature_schema": "feature-schema", "training": "training",
            "watermark": "watermark", "metrics": "metrics"}
"""Lineage key → property suffix (``fedguard:lineage:feature-schema`` holds ``feature_schema``)."""
SITE_FIELDS = {"num_examples": "num-examples", "data_manifest": "data-manifest", "epsilon": "epsilon",
               "delta": "delta", "rounds_participated": "rounds"}
"""A site's registry column → its ``fedguard:site:<suffix>`` property."""
RUN_ID = "fedguard:run-id"
ROUNDS = "fedguard:rounds"
CODE_VERSION = "fedguard:code-version"
GOVERNANCE = "fedguard:governance"
"""The model's gates at publication (:func:`lifecycle.governance.gates.summarise`), compact JSON; optional."""
SERVING_FORMAT = "fedguard:serving-format"
"""The ONNX export and its parity check (:class:`lifecycle.export.OnnxExport`), compact JSON; absent in a BOM
written before models were exported (such a model cannot be served: re-publish it)."""
ONNX_PREFIX = "fedguard:onnx:"
"""Readable properties repeating the export's main facts (opset, max-abs-diff, onnxruntime)."""


def properties(node: Mapping[str, Any]) -> dict[str, str]:
    """A CycloneDX object's properties as a dict (the last value wins for a repeated name)."""
    return {str(p["name"]): str(p.get("value", "")) for p in node.get("properties", [])}


def _legacy(bom: Mapping[str, Any]) -> dict[str, Any] | None:
    """The lineage of a BOM written before fedguard emitted CycloneDX proper (a ``fedguard`` key)."""
    section = bom.get("fedguard")
    return dict(section) if isinstance(section, Mapping) else None


def model_component(bom: Mapping[str, Any]) -> dict[str, Any]:
    """The ``machine-learning-model`` component the BOM describes.

    Raises
    ------
    KeyError
        The document describes no model (not a fedguard ML-BOM).
    """
    component = bom.get("metadata", {}).get("component")
    if isinstance(component, dict) and component.get("type") == "machine-learning-model":
        return component
    for candidate in bom.get("components", []):  # a legacy BOM listed the model first among its components
        if candidate.get("type") == "machine-learning-model":
            return dict(candidate)
    raise KeyError("no machine-learning-model component")


def _component(bom: Mapping[str, Any], ref: str) -> dict[str, Any] | None:
    for candidate in bom.get("components", []):
        if candidate.get("bom-ref") == ref:
            return dict(candidate)
    return None


def _reference(bom: Mapping[str, Any]) -> dict[str, Any] | None:
    component = _component(bom, REFERENCE_REF)
    if component is None:
        return None
    content = component["data"][0]["contents"]["attachment"]["content"]
    reference: dict[str, Any] = json.loads(content)
    return reference


def read_lineage(bom: Mapping[str, Any]) -> dict[str, Any]:
    """The model's lineage as fedguard records it: what ``bom["fedguard"]`` held before CycloneDX 1.6.

    Keys: ``architecture``, ``feature_schema``, ``training``, ``watermark``,
    ``metrics``, ``code_version``, ``dependencies`` (the main libraries'
    versions), and where known ``run_id``, ``rounds``, ``reference``,
    ``governance`` (the gates as evaluated at publication, signed with the weights)
    and ``serving_format`` (the ONNX export, its opset and parity check).

    Raises
    ------
    KeyError, TypeError, ValueError
        The document is not a fedguard ML-BOM (callers turn this into their own error).
    """
    legacy = _legacy(bom)
    if legacy is not None:
        return legacy
    props = properties(model_component(bom))
    lineage: dict[str, Any] = {key: json.loads(props[LINEAGE_PREFIX + suffix]) for key, suffix in SECTIONS.items()}
    lineage["code_version"] = props.get(CODE_VERSION, "")
    versions = {canonical_name(str(c["name"])): str(c.get("version", ""))
                for c in bom.get("components", []) if c.get("type") == "library"}
    lineage["dependencies"] = {name: versions.get(canonical_name(name), "not installed") for name in MAIN_DEPENDENCIES}
    if RUN_ID in props:
        lineage["run_id"] = props[RUN_ID]
    if ROUNDS in props:
        lineage["rounds"] = int(props[ROUNDS])
    if GOVERNANCE in props:
        lineage["governance"] = json.loads(props[GOVERNANCE])
    if SERVING_FORMAT in props:
        lineage["serving_format"] = json.loads(props[SERVING_FORMAT])
    reference = _reference(bom)
    if reference is not None:
        lineage["reference"] = reference
    return lineage


def _site_value(field: str, text: str | None) -> Any:
    if text is None:
        return None
    if field in ("num_examples", "rounds_participated"):
        return int(text)
    if field in ("epsilon", "delta"):
        return float(text)
    return text


def signed_sites(bom: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Each site's registry row as signed into the BOM (site → column → value).

    ``None`` for a BOM that does not carry the rows (one written before
    CycloneDX 1.6); a column the BOM leaves out was ``None`` in the row.
    """
    if _legacy(bom) is not None:
        return None
    sites: dict[str, dict[str, Any]] = {}
    for component in bom.get("components", []):
        if component.get("type") != "data" or not str(component.get("bom-ref", "")).startswith(SITE_REF_PREFIX):
            continue
        props = properties(component)
        name = props["fedguard:site"]
        sites[name] = {field: _site_value(field, props.get(f"{SITE_REF_PREFIX}{suffix}"))
                       for field, suffix in SITE_FIELDS.items()}
    return sites


def bom_spec(bom: Mapping[str, Any]) -> ModelSpec:
    """The architecture a model is rebuilt from."""
    return ModelSpec.from_dict(read_lineage(bom)["architecture"])


def bom_serving_format(bom: Mapping[str, Any]) -> dict[str, Any] | None:
    """The signed ONNX export section (file, SHA-256, opset, parity), or ``None`` for a model published before."""
    section = read_lineage(bom).get("serving_format")
    return dict(section) if isinstance(section, Mapping) else None


def bom_schema(bom: Mapping[str, Any]) -> DataSchema:
    """The feature schema requests are checked against."""
    return DataSchema.from_dict(read_lineage(bom)["feature_schema"])


def write_bom(bom: Mapping[str, Any], model_dir: Path) -> Path:
    """Write ``bom`` as ``bom.json`` in ``model_dir`` (sorted keys, so equal BOMs are equal bytes)."""
    path = model_dir / BOM_NAME
    path.write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")
    return path


def read_bom(model_dir: Path) -> dict[str, Any]:
    """Read ``bom.json`` from a model directory and check that its lineage can rebuild the model.

    Raises
    ------
    StateError
        The file is missing or is not a fedguard ML-BOM.
    """
    path = model_dir / BOM_NAME
    try:
        bom: dict[str, Any] = json.loads(path.read_text())
        lineage = read_lineage(bom)
        ModelSpec.from_dict(lineage["architecture"])
        DataSchema.from_dict(lineage["feature_schema"])
    except FileNotFoundError as exc:
        raise StateError(f"model directory '{model_dir}' has no {BOM_NAME}; it is not a fedguard model") from exc
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise StateError(f"'{path}' is not a valid fedguard ML-BOM ({exc!r}); re-export the model") from exc
    return bom
