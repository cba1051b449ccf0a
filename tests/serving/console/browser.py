"""Headless Debian Chromium through selenium, and a real uvicorn server in a thread, for the console's browser tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,800")


def need_browser() -> None:
    """Fail, saying what to install, where Debian's chromium or chromium-driver is missing (.ci/run installs both).

    A failure, not a skip: the console's browser tests are the only check of
    its pages in a real browser, and a run that silently skipped them would
    pass without it.
    """
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver", pytrace=False)


@contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, offline from everything but loopback."""
    need_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not look anything up
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fedguard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--proxy-server=http://127.0.0.1:9")  # nothing leaves the machine...
    options.add_argument("--proxy-bypass-list=127.0.0.1;localhost")  # ...but the console itself
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(width, height)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def text_of(browser: Any, css: str) -> str:
    """The rendered text of ``css``, read in one script (htmx may swap the element between two WebDriver calls)."""
    found = browser.execute_script("const e = document.querySelector(arguments[0]); "
                                   "return e === null ? null : e.innerText;", css)
    return "" if found is None else str(found).strip()


def confirm(browser: Any, button_id: str) -> Any:
    """Tick the confirmation box of the button's form, as an operator does; the button, to press."""
    from selenium.webdriver.common.by import By

    button = browser.find_element(By.ID, button_id)
    button.find_element(By.XPATH, "./ancestor::form").find_element(By.NAME, "confirm").click()
    return button


def submit(browser: Any, button_id: str) -> None:
    """Tick the confirmation of the button's form and press the button."""
    confirm(browser, button_id).click()


def wait_for(condition: Callable[[], Any], message: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it is truthy (the deadline only bounds a hang); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)
