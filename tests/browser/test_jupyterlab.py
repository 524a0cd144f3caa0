"""A real-browser test: JupyterLab from the course's own environment, driven in headless Chromium by Playwright.

It opens the tour, runs all its cells, checks that no cell failed, changes the dataset dropdown and the class slider
and checks that the figure changed; then it opens notebook 01 without running it and checks that its stored slider
renders as a widget (from the widget state stored with the notebook), not as ``HBox(...)`` text.

The browser is the Debian ``chromium`` package (``.ci/run`` installs it when missing); no browser build is ever
downloaded. On failure a screenshot is saved in the test's temporary folder. Server and browser are stopped by their
own handles at the end, also on failure.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("VKLIB_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback over a scratch copy of the notebooks (a run writes its results there, never
    into the repository). Yields ``(base_url, token, folder)``."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) or set "
                    f"VKLIB_CHROMIUM; .ci/run installs it")
    folder = tmp_path_factory.mktemp("lab")
    for name in ("00_course_tour.ipynb", "01_dataset_condensation.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    # the stored notebooks are the course's own: trust them, as a reader who cloned the course does
    subprocess.run([sys.executable, "-m", "jupyter", "trust", *(str(folder / n) for n in
                    ("00_course_tour.ipynb", "01_dataset_condensation.ipynb"))], check=True, capture_output=True)
    port, token = _free_port(), secrets.token_hex(16)
    log = open(folder / "jupyterlab.log", "w")
    # a fresh workspace and user settings: nothing is restored from an earlier JupyterLab session on this machine
    env = {**os.environ, "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".workspaces"),
           "JUPYTERLAB_SETTINGS_DIR": str(folder / ".settings")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.disable_check_xsrf=True"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {folder / 'jupyterlab.log'}")
                time.sleep(0.5)
        yield base, token, folder
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, tmp_path, request):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        pg.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'failure.png'}")
    pg.close()


def _open(page, lab, name):
    base, token, _ = lab
    page.goto(f"{base}/lab/tree/{name}?token={token}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)


def _figure_of(cell):
    return cell.locator(".jp-OutputArea-output img").last.get_attribute("src")


def test_tour_runs_and_its_widget_responds(page, lab):
    _open(page, lab, "00_course_tour.ipynb")
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.connectionStatus === 'connected'; }", timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # finished: every code cell has an execution count and none is queued or running ("[*]")
    page.wait_for_function(
        "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);"
        " return p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t)); }", timeout=600_000, polling=2000)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [errors.nth(i).inner_text() for i in range(errors.count())]
    assert not [t for t in texts if "Traceback" in t or "Error" in t], texts
    widget_cell = page.locator(".jp-CodeCell").filter(has=page.locator(".widget-dropdown")).last
    widget_cell.scroll_into_view_if_needed()
    before = _figure_of(widget_cell)
    widget_cell.locator(".widget-dropdown select").select_option("mnist")
    page.wait_for_function("(src) => [...document.querySelectorAll('.jp-OutputArea-output img')].every(i => i.src !== src)",
                           arg=before, timeout=60_000)
    after_dropdown = _figure_of(widget_cell)
    assert after_dropdown != before
    handle = widget_cell.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function("(src) => [...document.querySelectorAll('.jp-OutputArea-output img')].every(i => i.src !== src)",
                           arg=after_dropdown, timeout=60_000)
    assert _figure_of(widget_cell) != after_dropdown


def test_stored_notebook_renders_its_widgets(page, lab):
    _open(page, lab, "01_dataset_condensation.ipynb")
    # JupyterLab renders only the cells in view (windowing): scroll down through the notebook until the stored
    # slider has rendered, reading every rendered cell's text on the way
    widget = (".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output .widget-slider, "
              ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output .widget-hslider")
    seen, deadline = [], time.monotonic() + 180
    while page.locator(widget).count() == 0:
        assert time.monotonic() < deadline, "the stored slider of notebook 01 never rendered as a widget"
        seen.append(page.locator(".jp-Notebook").inner_text())
        page.evaluate("() => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')"
                      ".scrollBy(0, 400)")
        page.wait_for_timeout(300)
    seen.append(page.locator(".jp-Notebook").inner_text())
    assert not [t for t in seen if "HBox(children=" in t or "VBox(children=" in t]
