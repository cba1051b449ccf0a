"""When the simulation engine fails, the run ends: the ServerApp thread does not wait out its deadlines.

Flower's ``run_simulation`` raises when its engine cannot run (Ray did not
start, or no node can place a site), but the ServerApp thread it started
keeps waiting for sites that will never come (the site deadline, then each
round's timeout), which kept ``fedguard simulate`` alive for minutes after
the error. ``coordinator.grid.ResponsiveGrid`` now asks whether the engine is
gone at every wait.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from simulations.federation import SimulationConfig, _simulate, prepare_data

pytestmark = pytest.mark.integration


def test_a_failed_engine_ends_the_serverapp_thread(fedguard_home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray: Flower's own engine start is what fails
    ray_tmp = Path(tempfile.mkdtemp(prefix="fg-engfail-"))  # short: Ray's socket paths must stay < 108 bytes
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    # One GPU per site on a machine Ray sees no GPU on: no node can place a site, so the engine fails
    # after the ServerApp thread has started (validate() would refuse it earlier, so it is skipped here).
    cfg = SimulationConfig(sites=3, rounds=1, watermark="none", dp_epsilon=0, gpus_per_site=1.0)
    prepared = prepare_data(cfg, tmp_path / "data")
    overrides = cfg.coordinator_overrides(prepared.data_dir, tmp_path / "outcome.json")
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="Ending simulation"):
        _simulate(overrides, lambda event, payload: None, {}, cfg, False)
    started = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for thread in started:
        thread.join(timeout=60)  # the site deadline alone is 120 s: a thread still waiting is the defect
    assert not [t.name for t in started if t.is_alive()]
