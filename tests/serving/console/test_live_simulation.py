"""The console in a real browser beside a real ``fedguard simulate``: a run followed live, then a retrain launched.

``test_browser.py`` drives the same page with a progress log the test
writes; here the ServerApp writes it: four sites, three rounds of
breast-cancer with the default DP-SGD and SecAgg+, on the session's Ray
head. The page is opened once and never reloaded (a marker set in the
page's window survives to the end): every round it shows came through htmx's
polling, and the finished run links to the model version it published.

Then the operator records a site's consent withdrawal on the Consent page
and launches the retrain from the model's page: the Runs page shows the new
run, which publishes a version that supersedes the tainted one without the
withdrawn site, and the trail holds both actions under the operator's key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fedguard.console import Retrain, full_sources
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.e2e.conftest import FEDGUARD, _env
from tests.serving.console.browser import chromium, need_browser, served, submit, text_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]
ROUNDS = 3
SITES = 4
"""Four, so that the retrain without one keeps the three SecAgg+ needs."""


@pytest.fixture
def simulation(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A ``fedguard simulate`` child writing into a fresh home (killed if the test ends first)."""
    home = tmp_path / "home"
    Registry.open(Settings(home=home)).engine.dispose()  # the registry exists before the console opens it
    out = (tmp_path / "simulate.log").open("w")
    process = subprocess.Popen(
        [FEDGUARD, "simulate", "--sites", str(SITES), "--rounds", str(ROUNDS), "--watermark", "none", "--json"],
        env=_env(home), stdout=subprocess.PIPE, stderr=out, text=True)
    try:
        yield home, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        out.close()


def test_a_real_simulation_followed_live_then_retrained_from_the_console(
    simulation: tuple[Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    need_browser()
    home, process = simulation
    registry = Registry.open(Settings(home=home))
    admin = create_key(registry, "admin", "ops", actor="test")
    sources = full_sources(registry)
    assert isinstance(sources.retrain, Retrain)
    app = create_app(registry, ServingSettings(), console_sources=sources)
    runs = home / "runs"
    with served(app) as url, chromium() as browser, _reaped(sources.retrain):
        from selenium.webdriver.common.by import By

        browser.get(f"{url}/console/signin")
        browser.find_element(By.ID, "api_key").send_keys(admin.key)
        browser.find_element(By.ID, "signin").click()
        wait_for(lambda: "signin" not in browser.current_url, "not signed in")
        folder = wait_for(lambda: next((p for p in runs.iterdir() if p.name.startswith("sim-")), None)
                          if runs.is_dir() else None, "the simulation wrote no run folder", timeout=300)
        browser.get(f"{url}/console/runs/{folder.name}")
        browser.execute_script("window.fedguardNotReloaded = true;")
        seen: list[str] = []
        deadline = time.monotonic() + 600  # bounds a hang only: the loop ends on the run's published model
        while not browser.find_elements(By.ID, "run-model"):
            assert process.poll() in (None, 0), f"simulate failed:\n{(tmp_path / 'simulate.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the page never showed the published model; rounds seen {seen}"
            shown = text_of(browser, "#run-round")
            if shown and (not seen or seen[-1] != shown):
                seen.append(shown)
            time.sleep(0.1)
        seen.append(text_of(browser, "#run-round"))
        assert browser.execute_script("return window.fedguardNotReloaded === true;"), "the page was reloaded"
        model = text_of(browser, "#run-model")
        assert process.wait(timeout=120) == 0
        outcome = json.loads(process.stdout.read().strip().splitlines()[-1]) if process.stdout else {}
        assert f"{outcome['model']}:{outcome['version']}" in model
        rounds = [int(r) for r in dict.fromkeys(seen)]
        assert rounds == sorted(rounds) and rounds[-1] == ROUNDS, seen
        assert len(rounds) >= 2, f"the page showed only {seen}: it did not follow the run live"
        _withdraw_and_retrain(browser, url, registry, sources.retrain, str(outcome["model"]), folder.name)
    retrained = registry.get_version(str(outcome["model"]), 2)
    assert retrained.supersedes == 1 and {s.site for s in retrained.sites} == {"site-0", "site-2", "site-3"}
    operator = _audited(registry, f"apikey:{admin.info.key_id}")
    assert {("console.retrain", f"{outcome['model']}:1"), ("consent.withdrawn", "site:site-1")} <= operator


@contextmanager
def _reaped(retrain: Retrain) -> Iterator[None]:
    """Whatever the test's end, no retrain the console launched outlives it (each runs in its own session)."""
    try:
        yield
    finally:
        for child in retrain.launched:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def _withdraw_and_retrain(browser: Any, url: str, registry: Registry, retrain: Retrain, model: str,
                          first_run: str) -> None:
    """Record site-1's withdrawal, launch the retrain of version 1, and follow the Runs page until it publishes."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/console/consent")
    browser.find_element(By.ID, "withdraw-site").send_keys("site-1")
    browser.find_element(By.ID, "withdraw-reason").send_keys("consent withdrawn by the patient group")
    submit(browser, "withdraw")
    wait_for(lambda: "recorded the withdrawal of site site-1" in text_of(browser, "#message"), "withdrawal not shown")
    browser.get(f"{url}/console/models/{model}")
    assert "tainted" in text_of(browser, "#version-1").lower()
    submit(browser, "retrain-1")
    wait_for(lambda: "retraining " in text_of(browser, "#message"), "retrain not launched")
    assert "sites kept: site-0, site-2, site-3" in text_of(browser, "#message")
    published = f"{model}:2"
    deadline = time.monotonic() + 600  # bounds a hang only: the loop ends when the Runs page shows the new version
    while True:
        browser.get(f"{url}/console/runs")
        rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "tbody tr")]
        if any(published in row and first_run not in row for row in rows):
            break
        assert time.monotonic() < deadline, f"the retrain never showed on the Runs page: {rows}"
        [child] = retrain.launched
        if child.poll() not in (None, 0):
            [log] = registry.home.runs.glob("retrain-*.log")
            pytest.fail(f"the retrain exited {child.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(1)


def _audited(registry: Registry, actor: str) -> set[tuple[str, str]]:
    from sqlmodel import Session, select

    from lifecycle.registry.tables import AuditEvent

    with Session(registry.engine) as session:
        return {(e.action, e.subject) for e in session.exec(select(AuditEvent).where(AuditEvent.actor == actor))}
