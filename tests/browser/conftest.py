"""Fixtures of the browser tests: the scripted upstream, a live site, headless Chromium."""

import os
from pathlib import Path

import pytest
from hostile import STREAMABLE
from live import LONG_REPLY_TOKENS, REASONING_THOUGHTS, REASONING_WORDS, LiveSite
from scripted_upstream import (
    by_message,
    cut_stream,
    paced_reasoning,
    paced_words,
    status_error,
    text_in_pieces,
)

from conversations.demo import DemoModel, ServerThread

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def live_upstream():
    """The demo model at a pace a person (and a test) can watch, plus scripted faults."""
    scenarios = {
        "fail-404": status_error(404, "The model `scripted-model` does not exist"),
        "cut-stream": cut_stream(["Half ", "a reply"]),
        # About 12 seconds of numbered words, to act on a reply in progress.
        "long-reply": paced_words(LONG_REPLY_TOKENS, tokens_per_second=50),
        "hostile": text_in_pieces("\n\n".join(STREAMABLE)),
        # About 3 seconds of thoughts, then 2 of answer.
        "reasoning-slow": paced_reasoning(REASONING_THOUGHTS, REASONING_WORDS, 30),
    }
    thread = ServerThread(by_message(scenarios, DemoModel(tokens_per_second=40))).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def live_site(tmp_path_factory, live_upstream):
    site = LiveSite(tmp_path_factory.mktemp("site"), live_upstream.base_url).start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (bin/test installs it).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_site):
    context = browser.new_context(base_url=live_site.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
