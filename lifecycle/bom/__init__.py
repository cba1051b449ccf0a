"""The ML-BOM: what a model is made of, written next to its weights and signed with them.

A CycloneDX 1.6 document (:mod:`lifecycle.bom.document` writes and validates
it) carrying the lineage a regulator or auditor asks for: architecture and
feature schema, sites and the SHA-256 manifest of each site's data (never the
data), rounds, DP parameters and ε per site, aggregation rule,
secure-aggregation mode, watermark scheme and commitment, metrics, code
version, every installed package, and, where the coordinator collected them,
the ``reference`` statistics of the training data (summed per-feature
histograms; see :mod:`lifecycle.bom.reference`), and the ``serving_format``:
the ONNX export's SHA-256, opset and parity with PyTorch (:mod:`lifecycle.export`).

Read it only through :func:`read_lineage` and the accessors here
(:mod:`lifecycle.bom.lineage` says where each part lives in the document).
Writing it is :func:`lifecycle.bom.document.make_bom`, imported from there:
it needs ``cyclonedx-python-lib`` and ``jsonschema`` (a second of imports),
which the readers (serving, sites) do not pay for.
"""

from lifecycle.bom.environment import (
    MAIN_DEPENDENCIES,
    InstalledPackage,
    code_version,
    dependency_versions,
    installed_packages,
)
from lifecycle.bom.lineage import (
    BOM_NAME,
    bom_schema,
    bom_serving_format,
    bom_spec,
    model_component,
    read_bom,
    read_lineage,
    signed_sites,
    write_bom,
)

__all__ = ["BOM_NAME", "MAIN_DEPENDENCIES", "InstalledPackage", "bom_schema", "bom_serving_format", "bom_spec",
           "code_version",
           "dependency_versions", "installed_packages", "model_component", "read_bom", "read_lineage",
           "signed_sites", "write_bom"]
