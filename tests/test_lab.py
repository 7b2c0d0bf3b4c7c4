"""`make lab` works: JupyterLab serves the lessons and a headless Chromium renders one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_or_skip():
    if CHROMIUM and shutil.which("jupyter-lab") is None and not (REPO / ".venv/bin/jupyter-lab").exists():
        pytest.skip("jupyterlab not installed")
    if CHROMIUM is None:
        if os.environ.get("NANOGPT_COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (CI installs it with apt) but was not found")
        pytest.skip("browser test: install Debian's chromium (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jupyterlab_opens_a_lesson(tmp_path):
    playwright_api = _browser_or_skip()
    port, token = _free_port(), "nanogpt-test-token"
    # JupyterLab 4 renders long notebooks lazily ("windowing"): only cells near the viewport
    # are in the page. Turn that off in a throwaway settings folder so every cell renders.
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}", "--allow-root",
           f"--ServerApp.runtime_dir={tmp_path}/rt", f"--LabApp.user_settings_dir={tmp_path}/settings"]
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start")
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/lab/tree/lessons/00_setup.ipynb?token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.locator(".jp-Notebook h1", has_text="00 · Setup: how this course works").first.wait_for(timeout=30_000)
            cells = page.locator(".jp-Notebook .jp-Cell")
            for _ in range(60):  # all cells attach within a moment of the first
                if cells.count() >= 10:
                    break
                page.wait_for_timeout(500)
            cells = cells.count()
            last_heading = page.locator(".jp-Notebook h2", has_text="What next").count()
            page.screenshot(path=str(tmp_path / "lab.png"))
            browser.close()
        assert cells >= 10
        assert last_heading == 1  # the notebook's last cell rendered: the whole lesson is there
        assert (tmp_path / "lab.png").stat().st_size > 10_000
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
