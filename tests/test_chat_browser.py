"""The web chat page in a real browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request

import pytest
from test_chat_server import Scripted, serving

from nanogpt_course.chat.server import Limits
from nanogpt_course.chat.session import load_chat_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

# Every change of the page's conversation, recorded in the page as it happens.
RECORD = """
window.__updates = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll('.assistant');
  if (replies.length) window.__updates.push(replies[replies.length - 1].textContent);
}).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
"""


def _playwright():
    if CHROMIUM is None:
        if os.environ.get("NANOGPT_COURSE_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required here (CI installs it with apt) but was not found")
        pytest.skip("browser test: install Debian's chromium (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


def _health(port) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())


@pytest.mark.slow
def test_page_streams_a_reply_and_stop_ends_it(tiny_chat_checkpoint, tmp_path):
    api = _playwright()
    base = load_chat_model(tiny_chat_checkpoint, device="cpu")
    model = Scripted(base, n=400, delay=0.03)  # long enough to press Stop in the middle
    with serving(model, Limits(concurrency=1, queue=4)) as port, api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            page.goto(f"http://127.0.0.1:{port}/", timeout=30_000)
            page.locator("#info", has_text="chat model").wait_for(timeout=10_000)
            page.evaluate(RECORD)
            page.fill("#input", "Hello there!")
            page.click("#send")
            page.locator(".user", has_text="Hello there!").wait_for(timeout=10_000)
            page.wait_for_function("window.__updates.filter(t => t.length).length >= 3",
                                   timeout=20_000)
            assert page.is_enabled("#stop") and page.is_disabled("#send")
            page.click("#stop")
            page.locator(".notice", has_text="stopped").wait_for(timeout=10_000)
            updates = [u for u in page.evaluate("window.__updates") if u]
            reply = page.locator(".assistant").last.text_content()
            # streamed: the reply grew through several distinct states, each a prefix of the next
            assert len(set(updates)) >= 3
            assert all(b.startswith(a) for a, b in zip(updates, updates[1:]))
            assert reply.startswith("t0 t1 ") and len(reply.split()) < 400
            assert page.is_enabled("#send") and page.is_disabled("#stop")
            # readable on a phone: nothing wider than the screen
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.screenshot(path=str(tmp_path / "chat.png"))
        finally:
            browser.close()
        assert model.produced[0] < 400  # Stop reached the server: the generation ended
        for _ in range(200):
            if _health(port)["active"] == 0:
                break
            time.sleep(0.05)
        assert _health(port)["active"] == 0
    assert (tmp_path / "chat.png").stat().st_size > 5_000


@pytest.mark.slow
def test_page_completes_a_real_reply_and_new_chat_clears(tiny_chat_checkpoint):
    api = _playwright()
    model = load_chat_model(tiny_chat_checkpoint, device="cpu")
    with serving(model) as port, api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(f"http://127.0.0.1:{port}/", timeout=30_000)
            page.locator("#info", has_text="196,676 parameters").wait_for(timeout=10_000)
            page.fill("#temperature", "0")  # greedy: the slider moves and the label follows
            page.dispatch_event("#temperature", "input")
            assert page.text_content("#temperature-value") == "0"
            page.fill("#input", "Hello!")
            page.press("#input", "Enter")  # Enter sends too
            page.wait_for_selector(".assistant:not(.streaming)", timeout=30_000)
            assert page.locator(".assistant").last.text_content().strip()
            page.click("#new")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()
