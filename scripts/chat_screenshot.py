"""Screenshot of the web chat for the README: ``python scripts/chat_screenshot.py [--checkpoint CKPT]``.

Serves the checkpoint (default: the shipped chat model, else the cached tiny one) on a free
local port, sends a few messages through the page in headless Debian chromium (Playwright,
``/usr/bin/chromium``) and saves ``docs/chat-web-ui.png``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

from nanogpt_course.chat import lesson_checkpoint, load_chat_model
from nanogpt_course.chat.server import create_app

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", default=str(REPO / "docs" / "chat-web-ui.png"))
    p.add_argument("--message", action="append",
                   help="message to send (repeatable; default: two greetings)")
    p.add_argument("--temperature", default="0.6")
    args = p.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    model = load_chat_model(args.checkpoint or lesson_checkpoint("chat"), device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#info", has_text="parameters").wait_for()
        page.fill("#temperature", args.temperature)
        page.dispatch_event("#temperature", "input")
        for message in args.message or ["Hello!", "What is 12 plus 7?"]:
            page.fill("#input", message)
            page.click("#send")
            page.wait_for_selector("#send:not([disabled])")
        page.screenshot(path=args.out)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
