"""Shared fixtures: an isolated FEDGUARD_HOME and a published model without a federation run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from lifecycle.architecture import (  # noqa: E402
    DataSchema,
    ModelSpec,
    build_model,
    set_standardization,
)
from lifecycle.packaging import Publication, publish_model  # noqa: E402
from lifecycle.registry import Registry, SiteRecord, VersionRecord  # noqa: E402
from lifecycle.settings import Settings, get_settings  # noqa: E402

HEAVIEST_FIRST = (
    "tests/integration/test_deployment.py",
    "tests/simulations/experiments/test_sweep_e2e.py",
    "tests/integration/test_walk.py",
    "tests/integration/test_cnn_deployment.py",
    "tests/simulations/test_flower_run.py",
    "tests/e2e/test_privacy_flow.py",
    "tests/e2e/test_models.py",
    "tests/integration/test_ray_cluster.py",
    "tests/simulations/test_strategies.py",
    "tests/serving/console/test_live_simulation.py",
    "tests/simulations/test_ray_cleanup.py",
    "tests/e2e/test_cli_errors.py",
    "tests/coordinator/test_aggregate_guard.py",
    "tests/integration/test_site_transport.py",
    "tests/e2e/test_governance.py",
    "tests/e2e/test_quickstart.py",
    "tests/simulations/attacks/test_simulation.py",
    "tests/simulations/test_data_simulation.py",
    "tests/coordinator/test_reference.py",
    "tests/coordinator/test_validation.py",
    "tests/coordinator/test_identity.py",
    "tests/simulations/test_engine_failure.py",
    "tests/privacy/test_dp_sgd.py",
)
"""The test files that take longest, longest first (``pytest --durations`` 2026-12-06: 440, 270, 250 s first).

The suite runs as ``pytest -n auto --dist loadfile --no-loadscope-reorder`` (pyproject; CI adds ``-m 'not slow'``):
xdist hands whole files to its workers in collection order. Its default
reorder (files with the most tests first) handed the one-test files out
last, the 390 s sweep and the 260 s walk among them, so a run could end
with one worker on them while the other idled. Longest first is the
classic rule for greedy scheduling (LPT): the files left for the end are
the short ones, and the workers finish close together.
A file renamed or removed must be renamed or removed here too (checked at
collection).
"""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Move the files of :data:`HEAVIEST_FIRST` to the front, in that order; every file keeps its own order."""
    root = config.rootpath
    missing = [f for f in HEAVIEST_FIRST if not (root / f).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py HEAVIEST_FIRST names missing file(s) {missing}: "
                                "rename or drop them there")
    rank = {f: i for i, f in enumerate(HEAVIEST_FIRST)}

    def key(indexed: tuple[int, pytest.Item]) -> tuple[int, int]:
        index, item = indexed
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        return rank.get(path, len(rank)), index

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.fixture
def fedguard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh FEDGUARD_HOME for one test (SQLite registry inside it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("FEDGUARD_HOME", str(home))
    monkeypatch.delenv("FEDGUARD_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def session_ray_head() -> Iterator[str]:
    """One Ray head per test process (each xdist worker its own), started on first use, stopped at the end.

    A local Ray per simulation costs ~10 s to start and stop (Flower's backend
    always shuts it down); a run attached to this head starts only its job's
    workers, fresh per job (no state crosses from one test's sites to the
    next's). Its own short temp dir; stopped by its own pids, never ``ray stop``.
    """
    from tests.ray_cluster import RayCluster, short_tmpdir

    cluster = RayCluster(short_tmpdir("fgray-"))
    try:
        yield cluster.start_head(cpus=max(1, min(os.cpu_count() or 1, 2)))
    finally:
        cluster.stop()


@pytest.fixture
def shared_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's simulations (in process or ``fedguard simulate`` children) at the session's Ray head.

    ``FEDGUARD_TEST_LOCAL_RAY=1`` keeps a local Ray per simulation (to compare, or to debug one test).
    """
    if os.environ.get("FEDGUARD_TEST_LOCAL_RAY") == "1":
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        return ""
    address = str(request.getfixturevalue("session_ray_head"))
    monkeypatch.setenv("RAY_ADDRESS", address)
    return address


@pytest.fixture
def registry(fedguard_home: Path) -> Registry:
    return Registry.open(Settings(home=fedguard_home))


def make_publication(name: str = "demo", features: int = 4, seed: int = 0) -> Publication:
    """A small untrained-but-valid model publication (deterministic weights)."""
    torch.manual_seed(seed)
    spec = ModelSpec(in_features=features, num_classes=2, hidden=(8,))
    model = build_model(spec)
    set_standardization(model, torch.zeros(features), torch.ones(features))
    schema = DataSchema(features=tuple(f"f{i}" for i in range(features)), labels=("no", "yes"))
    sites = [SiteRecord(f"site-{i}", 10 + i, f"{i:064x}", 1.5, 1e-5, 1) for i in range(2)]
    return Publication(
        name=name, model=model, spec=spec, schema=schema, run_id=uuid.uuid4().hex,
        run_config={"rounds": 1}, rounds=1, sites=sites,
        training={"rounds": 1, "aggregation": "fedavg", "secure_aggregation": "none",
                  "dp": {"target_epsilon": 3.0, "delta": 1e-5},
                  "sites": [{"site": s.site, "num_examples": s.num_examples, "data_manifest": s.data_manifest,
                             "dp": {"epsilon": s.epsilon}} for s in sites]},
        watermark={"scheme": "none"}, metrics={"accuracy": 0.5},
    )


@pytest.fixture
def published(registry: Registry) -> VersionRecord:
    """One published, signed model version named 'demo' (4 features, 2 classes)."""
    return publish_model(registry, make_publication())


POSTGRES_ADMIN_URL = os.environ.get(
    "FEDGUARD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    name = f"fedguard_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}; start it (see .ci/run)")
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
