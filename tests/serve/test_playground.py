"""The playground at / in a real headless browser: Playwright driving Debian's Chromium (``apt-get install
chromium``; the Makefile's setup does it). In CI (CI=true) a browser that cannot run fails the test; on a
developer machine without it the test is skipped with one line. ``GENMODELS_SCREENSHOT=PATH`` saves what
the page looks like after the chat (docs/serve-playground.png was made so)."""
from __future__ import annotations

import os
import shutil
import threading

import pytest

import genmodels
from genmodels.serve import ServerThread, Service, build_app

CHROMIUM = os.environ.get("GENMODELS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
        if CHROMIUM is None:
            raise RuntimeError("no chromium on PATH (apt-get install chromium)")
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            yield b
            b.close()
    except Exception as e:  # no playwright, no chromium, or a browser that cannot start
        if os.environ.get("CI") == "true":
            pytest.fail(f"the playground's browser test cannot run in CI: {e}")
        pytest.skip(f"no browser for the playground test ({type(e).__name__}: {str(e).splitlines()[0]})")


def test_the_playground_chats_with_streaming_and_shows_the_model(browser, chat_model):
    service = Service(chat_model, "tiny", max_batch=2)
    with ServerThread(build_app(service)) as s:
        page = browser.new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(s.url) else route.abort())
        page.goto(s.url + "/")
        page.wait_for_function("document.getElementById('info').textContent.includes('model: tiny')")
        assert "context: 256 tokens" in page.inner_text("#info")
        page.fill("#temperature", "0")
        page.fill("#max_tokens", "20")
        page.fill("#prompt", "What is 2+2?")
        page.press("#prompt", "Enter")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')")
        want = genmodels.chat(chat_model, [{"role": "user", "content": "What is 2+2?"}], max_new_tokens=20,
                              temperature=0)
        assert page.locator(".assistant").last.text_content() == want
        assert page.locator(".user").last.text_content() == "What is 2+2?"
        if os.environ.get("GENMODELS_SCREENSHOT"):
            page.set_viewport_size({"width": 1000, "height": 560})
            page.screenshot(path=os.environ["GENMODELS_SCREENSHOT"])
        page.close()


def test_stop_ends_the_reply_and_frees_the_row(browser, chat_model):
    service = Service(chat_model, "tiny", max_batch=2)
    engine, gate, step = service.engine, threading.Event(), service.engine.session.step

    def held_step():  # after 3 steps the engine waits until the test has clicked Stop
        if engine.steps >= 3:
            gate.wait(timeout=30)
        return step()
    engine.session.step = held_step
    with ServerThread(build_app(service)) as s:
        page = browser.new_page()
        page.goto(s.url + "/")
        page.wait_for_function("document.getElementById('info').textContent.includes('model: tiny')")
        page.fill("#max_tokens", "120")
        page.fill("#temperature", "0")
        page.fill("#prompt", "Tell me a long story.")
        page.click("#send")
        page.wait_for_function("document.getElementById('stopbtn').disabled === false")
        page.click("#stopbtn")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        (job,) = engine.running.values()
        for _ in range(2000):  # bounded polling: the server sees the closed stream
            if job.cancelled:
                break
            page.wait_for_timeout(5)
        assert job.cancelled
        gate.set()
        for _ in range(2000):  # bounded polling: the row leaves at the engine's next step
            if engine.rows() == 0:
                break
            page.wait_for_timeout(5)
        assert engine.rows() == 0 and engine.steps < 100
        assert page.is_enabled("#send")
        page.close()
