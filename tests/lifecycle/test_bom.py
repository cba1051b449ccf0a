"""The ML-BOM is CycloneDX 1.6 that validates, lists the whole environment, and reads back exactly."""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from lifecycle.bom import (
    BOM_NAME,
    bom_schema,
    bom_spec,
    installed_packages,
    model_component,
    read_bom,
    read_lineage,
    signed_sites,
)
from lifecycle.bom.document import make_bom, validate_bom
from lifecycle.bom.environment import canonical_name
from lifecycle.bom.reference import bom_reference
from lifecycle.errors import FedguardError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, VersionRecord
from tests.conftest import make_publication

REFERENCE = {"features": ["f0"], "edges": [[0.0, 1.0]], "counts": [[1, 3, 0]], "classes": ["no", "yes"],
             "predictions": [1, 2], "sites": ["site-0"]}


def _published_bom(published: VersionRecord) -> dict[str, Any]:
    bom: dict[str, Any] = json.loads((published.artifact.model_dir / BOM_NAME).read_text())
    return bom


def _schema_errors(bom: dict[str, Any]) -> list[str]:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom), all_errors=True)
    return [str(getattr(e.data, "message", e)) for e in errors or ()]


def test_published_bom_validates_against_cyclonedx_1_6(published: VersionRecord) -> None:
    bom = _published_bom(published)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.6")
    assert "fedguard" not in bom  # no custom top-level key: CycloneDX tools reject one
    assert _schema_errors(bom) == []


def test_the_validator_rejects_what_the_old_bom_did(published: VersionRecord) -> None:
    bom = _published_bom(published)
    bom["fedguard"] = read_lineage(bom)
    assert any("fedguard" in e for e in _schema_errors(bom))
    with pytest.raises(FedguardError, match="CycloneDX 1.6"):
        validate_bom(bom)


def test_every_installed_package_is_a_component_with_its_purl(published: VersionRecord) -> None:
    libraries = {c["purl"]: c for c in _published_bom(published)["components"] if c["type"] == "library"}
    installed = {canonical_name(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}
    assert len(libraries) == len(installed) > 50
    for name in ("torch", "flwr", "opacus", "tenseal", "safetensors", "cyclonedx-python-lib", "scikit-learn"):
        purl = PackageURL(type="pypi", name=name, version=metadata.version(name)).to_string()
        assert purl.startswith(f"pkg:pypi/{name}@") and purl in libraries, name  # torch's "+cpu" is "%2Bcpu"
    assert all(purl == libraries[purl]["bom-ref"] for purl in libraries)


def test_model_card_and_data_components(published: VersionRecord) -> None:
    bom = _published_bom(published)
    model = model_component(bom)
    assert model["type"] == "machine-learning-model" and model["name"] == "demo"
    assert model["hashes"][0]["alg"] == "SHA-256" and len(model["hashes"][0]["content"]) == 64
    card = model["modelCard"]
    assert card["modelParameters"]["task"] == "classification"
    assert card["modelParameters"]["datasets"] == [{"ref": "fedguard:site:site-0"}, {"ref": "fedguard:site:site-1"}]
    assert card["quantitativeAnalysis"]["performanceMetrics"] == [{"type": "accuracy", "value": "0.5"}]
    assert "differential privacy" in card["considerations"]["performanceTradeoffs"][0]
    data = {c["name"]: c for c in bom["components"] if c["type"] == "data"}
    assert data["site-1"]["hashes"] == [{"alg": "SHA-256", "content": f"{1:064x}"}]
    assert data["site-1"]["data"][0]["type"] == "dataset"
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["fedguard:run-id"] == published.run_id
    assert props["fedguard:secure-aggregation"] == "none" and props["fedguard:dp:target-epsilon"] == "3.0"


def test_lineage_reads_back_what_was_published(published: VersionRecord) -> None:
    pub = make_publication()
    lineage = read_lineage(read_bom(published.artifact.model_dir))
    assert lineage["training"] == pub.training and lineage["metrics"] == pub.metrics
    assert lineage["watermark"] == pub.watermark and lineage["architecture"] == pub.spec.to_dict()
    assert lineage["dependencies"]["torch"] == metadata.version("torch")
    assert lineage["run_id"] == published.run_id and lineage["rounds"] == 1
    assert "reference" not in lineage
    bom = _published_bom(published)
    assert bom_spec(bom) == pub.spec and bom_schema(bom) == pub.schema
    assert signed_sites(bom) == {s.site: {k: v for k, v in s.__dict__.items() if k != "site"} for s in pub.sites}


def test_reference_is_an_attachment_that_validates_and_reads_back() -> None:
    pub = make_publication()
    bom = make_bom(model_name="demo", spec=pub.spec, schema=pub.schema, weights_sha256="ab" * 32,
                   training=pub.training, watermark=pub.watermark, metrics={"accuracy": float("nan"), "f1": {"a": 1.0}},
                   reference=REFERENCE, sites=pub.sites, packages=installed_packages()[:3])
    assert _schema_errors(bom) == []
    assert read_lineage(bom)["reference"] == REFERENCE
    assert bom_reference(bom) is not None
    assert read_lineage(bom)["metrics"]["f1"] == {"a": 1.0}  # NaN and nesting survive in the lineage


def test_a_bom_of_the_previous_format_still_reads(published: VersionRecord) -> None:
    lineage = read_lineage(_published_bom(published))
    legacy = {"bomFormat": "CycloneDX", "specVersion": "1.6",
              "components": [{"type": "machine-learning-model", "name": "demo"}], "fedguard": lineage}
    assert read_lineage(legacy) == lineage and signed_sites(legacy) is None
    assert bom_spec(legacy) == make_publication().spec


def test_registry_publish_still_round_trips(registry: Registry) -> None:
    version = publish_model(registry, make_publication(seed=4))
    assert read_lineage(read_bom(version.artifact.model_dir))["run_id"] == version.run_id
