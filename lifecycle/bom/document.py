"""Writing the ML-BOM: a CycloneDX 1.6 document, built with ``cyclonedx-python-lib`` and validated.

What it holds (where, see :mod:`lifecycle.bom.lineage`): the model as a
``machine-learning-model`` component with its model card (parameters, the
datasets it was trained on, performance metrics, considerations), each site's
training data as a ``data`` component identified by the SHA-256 manifest of
the data (never the data), the reference statistics of the training data when
collected, every installed Python package of the publishing environment with
its ``pkg:pypi`` purl, and fedguard's lineage (DP parameters and ε per site,
secure-aggregation mode, watermark, run, and the promotion gates as evaluated
at publication) as ``fedguard:`` properties.

``cyclonedx-python-lib`` (11.x) models components, hashes, purls, properties
and dependencies but not yet ``modelCard`` nor ``data``; those two are added
to its JSON output, and the whole document is then checked against the
CycloneDX 1.6 JSON schema (the library's strict validator) before it is
written, so fedguard never signs a BOM that CycloneDX tools would reject.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from packageurl import PackageURL

from lifecycle.bom.environment import InstalledPackage, canonical_name, code_version, installed_packages
from lifecycle.bom.lineage import (
    CODE_VERSION,
    GOVERNANCE,
    LINEAGE_PREFIX,
    MODEL_REF,
    ONNX_PREFIX,
    REFERENCE_REF,
    ROUNDS,
    RUN_ID,
    SECTIONS,
    SERVING_FORMAT,
    SITE_FIELDS,
    SITE_REF_PREFIX,
)
from lifecycle.bom.model_card import model_card_section, summary_properties
from lifecycle.description import DataSchema, ModelSpec
from lifecycle.errors import FedguardError


class SiteFacts(Protocol):
    """One site's registry row (:class:`lifecycle.registry.SiteRecord` has these attributes)."""

    @property
    def site(self) -> str: ...
    @property
    def num_examples(self) -> int: ...
    @property
    def data_manifest(self) -> str: ...
    @property
    def epsilon(self) -> float | None: ...
    @property
    def delta(self) -> float | None: ...
    @property
    def rounds_participated(self) -> int: ...


def _sha256(content: str) -> list[HashType]:
    """A SHA-256 hash entry, or none where the value is not one (an unknown manifest)."""
    valid = len(content) == 64 and all(c in "0123456789abcdefABCDEF" for c in content)
    return [HashType(alg=HashAlgorithm.SHA_256, content=content)] if valid else []


def _site_component(site: SiteFacts) -> Component:
    props = [Property(name="fedguard:site", value=site.site)]
    for field, suffix in SITE_FIELDS.items():
        value = getattr(site, field)
        if value is not None:
            text = repr(value) if isinstance(value, float) else str(value)
            props.append(Property(name=f"{SITE_REF_PREFIX}{suffix}", value=text))
    return Component(
        name=site.site, type=ComponentType.DATA, bom_ref=f"{SITE_REF_PREFIX}{site.site}",
        hashes=_sha256(site.data_manifest), properties=props,
        description=f"training data of site '{site.site}', identified by the SHA-256 manifest of its records",
    )


def _site_data(site: str) -> list[dict[str, Any]]:
    return [{
        "type": "dataset", "name": site,
        "description": "The records stayed at the site; the hash is the manifest the site computed over them.",
        "governance": {"custodians": [{"organization": {"name": site}}]},
    }]


def _compact(value: Any) -> str:
    """JSON text without spaces, keys sorted (exact floats; NaN allowed: it is only text to CycloneDX)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _reference_data(reference: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = _compact(reference)
    return [{
        "type": "dataset", "name": "reference statistics",
        "description": "Summed per-feature histograms of the training data (federation.reference), "
                       "which serving's drift monitor compares live traffic with.",
        "contents": {"attachment": {"contentType": "application/json", "content": content}},
    }]


@cache
def _library(package: InstalledPackage) -> Component:
    """The BOM component of one installed package (built once per process: building ~160 took 0.2 s a BOM)."""
    purl = PackageURL(type="pypi", name=canonical_name(package.name), version=package.version)
    return Component(name=package.name, version=package.version, type=ComponentType.LIBRARY,
                     purl=purl, bom_ref=purl.to_string())


def _serving_format_properties(section: Mapping[str, Any]) -> list[Property]:
    """The ONNX export section (exact, compact JSON) and its main facts spelled one per property."""
    parity = section.get("parity", {})
    return [
        Property(name=SERVING_FORMAT, value=_compact(section)),
        Property(name=f"{ONNX_PREFIX}opset", value=str(section.get("opset"))),
        Property(name=f"{ONNX_PREFIX}max-abs-diff", value=repr(parity.get("max_abs_diff"))),
        Property(name=f"{ONNX_PREFIX}onnxruntime", value=str(section.get("onnxruntime"))),
    ]


def _lineage_properties(
    sections: Mapping[str, Any], version: str, run_id: str | None, rounds: int | None,
    governance: Mapping[str, Any] | None = None,
) -> list[Property]:
    props = [Property(name=LINEAGE_PREFIX + suffix, value=_compact(sections[key])) for key, suffix in SECTIONS.items()]
    props.append(Property(name=CODE_VERSION, value=version))
    if run_id is not None:
        props.append(Property(name=RUN_ID, value=run_id))
    if rounds is not None:
        props.append(Property(name=ROUNDS, value=str(rounds)))
    if governance is not None:
        props.append(Property(name=GOVERNANCE, value=_compact(governance)))
    return props


def validate_bom(bom: Mapping[str, Any]) -> None:
    """Check ``bom`` against the CycloneDX 1.6 JSON schema.

    Raises
    ------
    FedguardError
        The document does not validate (a fedguard bug: report it with the message).
    """
    # Imported here, not with the module: the validator's jsonschema format checks import rfc3987_syntax,
    # which builds a Lark grammar at import (~1.5 s of CPU), paid by every process importing lifecycle.packaging
    # (CLI refusals, ``fedguard run``, the serving tier) though only a publication validates.
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom))
    if error is not None:
        detail = getattr(error.data, "message", str(error))
        raise FedguardError(f"the ML-BOM does not validate against CycloneDX 1.6 ({detail}); this is a fedguard bug")


def _code_properties(spec: ModelSpec) -> list[tuple[str, str]]:
    """A custom model's module and the SHA-256 of its source (also in the ``architecture`` section)."""
    if spec.kind != "custom":
        return [("fedguard:model:kind", spec.kind)]
    return [("fedguard:model:kind", spec.kind), ("fedguard:model:module", spec.module),
            ("fedguard:model:code-sha256", spec.code_sha256)]


def make_bom(
    *,
    model_name: str,
    spec: ModelSpec,
    schema: DataSchema,
    weights_sha256: str,
    training: dict[str, Any],
    watermark: dict[str, Any],
    metrics: dict[str, Any],
    now: datetime | None = None,
    reference: dict[str, Any] | None = None,
    sites: Sequence[SiteFacts] = (),
    run_id: str | None = None,
    rounds: int | None = None,
    packages: list[InstalledPackage] | None = None,
    governance: dict[str, Any] | None = None,
    serving_format: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble and validate the ML-BOM (a JSON-serialisable dict in CycloneDX 1.6).

    ``sites`` are the registry rows published with the model (what ``fedguard
    models verify`` compares the registry with); ``reference``, when given, is
    the training data's summed per-feature histograms
    (:class:`federation.reference.ReferenceStats`); ``packages`` defaults to
    every distribution installed here; ``governance``, when given, is the
    policy's gates as evaluated before signing
    (:func:`lifecycle.governance.gates.summarise`), signed with the weights;
    ``serving_format``, when given, is the ONNX export and its parity check
    (:meth:`lifecycle.export.OnnxExport.to_dict`).
    """
    version = code_version()
    sections = {"architecture": spec.to_dict(), "feature_schema": schema.to_dict(), "training": training,
                "watermark": watermark, "metrics": metrics}
    model = Component(
        name=model_name, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=MODEL_REF,
        hashes=_sha256(weights_sha256),
        properties=[*_lineage_properties(sections, version, run_id, rounds, governance),
                    *(_serving_format_properties(serving_format) if serving_format is not None else []),
                    *(Property(name=name, value=value) for name, value in summary_properties(training, watermark)),
                    *(Property(name=name, value=value) for name, value in _code_properties(spec))],
    )
    data = [_site_component(site) for site in sites]
    if reference is not None:
        data.append(Component(name="reference statistics", type=ComponentType.DATA, bom_ref=REFERENCE_REF))
    libraries = [_library(p) for p in (packages if packages is not None else installed_packages())]
    tool = Component(name="fedguard", version=version, type=ComponentType.APPLICATION)
    meta = BomMetaData(component=model, tools=ToolRepository(components=[tool]), timestamp=now or datetime.now(UTC))
    bom = Bom(serial_number=uuid.uuid4(), metadata=meta, components=[*data, *libraries])
    bom.register_dependency(model, [*data, *libraries])
    document: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    document["metadata"]["component"]["modelCard"] = model_card_section(
        spec, training, metrics, datasets=[str(c.bom_ref) for c in data if str(c.bom_ref) != REFERENCE_REF],
    )
    for component in document["components"]:
        ref = str(component.get("bom-ref", ""))
        if ref == REFERENCE_REF and reference is not None:
            component["data"] = _reference_data(reference)
        elif ref.startswith(SITE_REF_PREFIX):
            component["data"] = _site_data(component["name"])
    validate_bom(document)
    return document
