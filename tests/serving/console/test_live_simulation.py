"""The Runs page in a real browser while a real ``fedguard simulate`` trains: the page updates itself, round by round.

``test_browser.py`` drives the same page with a progress log the test
writes; here the ServerApp writes it: three sites, three rounds of
breast-cancer with the default DP-SGD and SecAgg+, on the session's Ray
head. The page is opened once and never reloaded (a marker set in the
page's window survives to the end): every round it shows came through htmx's
polling, and the finished run links to the model version it published.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedguard.console import full_sources
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from serving.app import create_app
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.e2e.conftest import FEDGUARD, _env
from tests.serving.console.browser import chromium, need_browser, served, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]
ROUNDS = 3


def _text(browser: object, css: str) -> str:
    found = browser.execute_script(  # type: ignore[attr-defined]
        "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText;", css)
    return "" if found is None else str(found).strip()


@pytest.fixture
def simulation(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A ``fedguard simulate`` child writing into a fresh home (killed if the test ends first)."""
    home = tmp_path / "home"
    Registry.open(Settings(home=home)).engine.dispose()  # the registry exists before the console opens it
    out = (tmp_path / "simulate.log").open("w")
    process = subprocess.Popen(
        [FEDGUARD, "simulate", "--sites", "3", "--rounds", str(ROUNDS), "--watermark", "none", "--json"],
        env=_env(home), stdout=subprocess.PIPE, stderr=out, text=True)
    try:
        yield home, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        out.close()


def test_a_run_page_follows_a_real_simulation_round_by_round(
    simulation: tuple[Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    need_browser()
    home, process = simulation
    registry = Registry.open(Settings(home=home))
    admin = create_key(registry, "admin", "ops", actor="test")
    app = create_app(registry, ServingSettings(), console_sources=full_sources(registry))
    runs = home / "runs"
    with served(app) as url, chromium() as browser:
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
            shown = _text(browser, "#run-round")
            if shown and (not seen or seen[-1] != shown):
                seen.append(shown)
            time.sleep(0.1)
        seen.append(_text(browser, "#run-round"))
        assert browser.execute_script("return window.fedguardNotReloaded === true;"), "the page was reloaded"
        model = _text(browser, "#run-model")
        assert process.wait(timeout=120) == 0
    outcome = json.loads(process.stdout.read().strip().splitlines()[-1]) if process.stdout else {}
    assert f"{outcome['model']}:{outcome['version']}" in model
    rounds = [int(r) for r in dict.fromkeys(seen)]
    assert rounds == sorted(rounds) and rounds[-1] == ROUNDS, seen
    assert len(rounds) >= 2, f"the page showed only {seen}: it did not follow the run live"
