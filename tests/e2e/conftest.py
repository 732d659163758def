"""Real-browser tests: the app runs as `ctxdistill serve` in a child process on a free port,
with its own workspace; Debian's Chromium is driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import save_version

CHROMIUM = os.environ.get("CTXDISTILL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, env: dict | None = None, timeout: float = 120.0):
    """Start the app; return (process, url). The caller stops it with stop_app."""
    port = free_port()
    workspace.mkdir(parents=True, exist_ok=True)
    log = open(workspace / "server.log", "wb")
    full_env = {**os.environ, "CTXDISTILL_HOME": str(workspace), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxdistill.cli", "serve", "--port", str(port)],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the app exited:\n" + (workspace / "server.log").read_text()[-3000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise TimeoutError("the app did not start:\n" + (workspace / "server.log").read_text()[-3000:])


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def seed_run(store, tiny_checkpoint, tiny_model) -> tuple[int, int]:
    """(version id, run id): the pirate constitution saved, and a finished training run of the tiny
    model with an adapter (a random LoRA update) that the app lists as a student."""
    from tests.test_evaluate import _adapter

    cid = save_version(store, message="seed")
    run = store.create_job(
        "train", {"model": str(tiny_checkpoint), "constitution_id": cid, "loss": "kl", "steps": 3}, heavy=True
    )
    store.update_job(run, state="done")
    _adapter(tiny_model, store.runs_dir / str(run) / "adapter", 0.5)
    return cid, run


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    proc, url = start_app(tmp_path_factory.mktemp("e2e-workspace"))
    yield url
    stop_app(proc)


def set_number(page, selector: str, value: str, tries: int = 3) -> None:
    """Types ``value`` into a number box and leaves it (the number is the form's once the box loses
    focus), again while the box does not hold it half a second later: a box inside an accordion
    that is still opening can be drawn anew, with its default, after the first fill."""
    box = page.locator(selector)
    for _ in range(tries):
        box.fill(value)
        box.press("Tab")
        page.wait_for_timeout(500)
        if box.input_value() == value:
            return
    raise AssertionError(f"{selector} does not keep {value!r}: it holds {box.input_value()!r}")


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@contextmanager
def app_page(browser, url: str, height: int):
    """A page of the app at ``url`` in a fresh browser context, closed afterwards."""
    context = browser.new_context(viewport={"width": 1400, "height": height})
    p = context.new_page()
    p.set_default_timeout(60_000)
    p.goto(url)
    try:
        yield p
    finally:
        context.close()


@pytest.fixture
def page(browser, app_url):
    with app_page(browser, app_url, 1000) as p:
        p.wait_for_selector("#c-name textarea, #c-name input")
        yield p


@pytest.fixture(scope="module")
def home_url(home, tiny_checkpoint):
    """The app on the module's own ``home`` workspace (a fixture it defines), with the tiny model."""
    proc, url = start_app(home, env={"CTXDISTILL_MODEL": str(tiny_checkpoint)})
    yield url
    stop_app(proc)


@pytest.fixture
def home_page(browser, home_url):
    """A fresh page of ``home_url``, once the Constitution tab shows a principle."""
    with app_page(browser, home_url, 1200) as p:
        p.wait_for_function("document.querySelector('#principle-text textarea')?.value.length > 0")
        yield p


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
