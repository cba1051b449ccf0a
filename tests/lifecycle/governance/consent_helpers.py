"""Publishing versions with chosen sites in their lineage (for the consent tests), fast.

The first version of a registry is packaged and signed for real
(:func:`publish_model`); later ones register the same signed artifact under a
new run with other sites (``fresh=True`` packages a new one), which is all
consent and serving look at: lineage rows and a signature that verifies.
"""

from __future__ import annotations

import dataclasses
import uuid
import weakref

from lifecycle.artifacts import StoredArtifact
from lifecycle.governance.enforce import version_row
from lifecycle.governance.tables import VersionStage
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry, SiteRecord, VersionRecord
from tests.conftest import make_publication

_ARTIFACTS: weakref.WeakKeyDictionary[Registry, StoredArtifact] = weakref.WeakKeyDictionary()


def publish(registry: Registry, sites: tuple[str, ...] = ("st-marys", "guys"), *, name: str = "demo",
            seed: int = 0, fresh: bool = False) -> VersionRecord:
    """A signed version of ``name`` whose run had exactly ``sites``."""
    records = [SiteRecord(site, 10 + i, f"{i:064x}", 1.5, 1e-5, 1) for i, site in enumerate(sites)]
    run_id = uuid.uuid4().hex
    artifact = _ARTIFACTS.get(registry)
    if artifact is None or fresh:
        pub = make_publication(name=name, seed=seed)
        training = {**pub.training, "sites": [{"site": s.site, "num_examples": s.num_examples,
                                                "data_manifest": s.data_manifest, "dp": {"epsilon": s.epsilon}}
                                               for s in records]}
        record = publish_model(registry, dataclasses.replace(pub, sites=records, training=training, run_id=run_id))
        if artifact is None:
            _ARTIFACTS[registry] = record.artifact
        return record
    signer = registry.latest_versions()[0].signer_fingerprint
    return registry.publish(name=name, artifact=artifact, signer_fingerprint=signer, run_id=run_id,
                            run_config={"rounds": 1}, rounds=1, sites=records, metrics={"accuracy": 0.5},
                            watermark={"scheme": "none"}, actor="service:coordinator")


def stage(registry: Registry, version: int, to: str = "staging", *, name: str = "demo",
          environment: str = "default") -> None:
    """Put ``name:version`` at stage ``to`` in ``environment`` (the row a stage promotion writes; no gates)."""
    with registry.transaction() as session:
        _, row = version_row(session, name, version)
        assert row.id is not None
        session.add(VersionStage(model_version_id=row.id, environment=environment, stage=to))
