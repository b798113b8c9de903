"""A reasoning model in Chromium: thinking shown live and collapsed once the answer begins."""

import pytest
from live import REASONING_THOUGHTS, REASONING_WORDS, log_in

from conversations.demo import demo_reasoning_text, demo_reply_text

pytestmark = pytest.mark.browser

THOUGHTS = " ".join(f"t{i:04d}" for i in range(1, REASONING_THOUGHTS + 1))
ANSWER = " ".join(f"w{i:04d}" for i in range(1, REASONING_WORDS + 1))


def open_new_conversation(page, site):
    log_in(page, site)
    page.get_by_role("button", name="New conversation").first.click()
    page.locator("#chat[data-socket=open]").wait_for()


def send(page, text):
    page.locator("textarea[name=content]").fill(text)
    page.locator("textarea[name=content]").press("Enter")


def test_thinking_streams_live_then_collapses_and_survives_reloads(page, live_site):
    open_new_conversation(page, live_site)
    send(page, "reasoning-slow please")
    reasoning = page.locator("[data-part=reasoning]").last
    message = page.locator("[data-role=assistant]").last

    # Shown while the model thinks: open, "Thinking…", growing, and not in the answer.
    page.wait_for_function(
        "() => { const r = document.querySelector('[data-part=reasoning]');"
        " return r && r.innerText.includes('t0010'); }"
    )
    assert reasoning.evaluate("d => d.open") is True
    assert "Thinking…" in reasoning.locator("summary").inner_text()
    assert message.inner_text().strip() == ""

    page.reload()  # mid-thought: the page picks the reasoning up where it is
    page.locator("#chat[data-socket=open]").wait_for()
    page.wait_for_function(
        "() => { const r = document.querySelector('[data-part=reasoning]');"
        " return r && r.innerText.includes('t0040'); }"
    )
    assert page.locator("[data-part=reasoning]").last.evaluate("d => d.open") is True

    # The answer begins: the block closes and says how long it took; the reader may reopen it.
    page.wait_for_function(
        "() => document.querySelector('[data-role=assistant]').innerText.includes('w0001')"
    )
    reasoning = page.locator("[data-part=reasoning]").last
    page.wait_for_function("() => !document.querySelector('[data-part=reasoning]').open")
    assert "Thought for" in reasoning.locator("summary").inner_text()
    page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=15_000)
    assert " ".join(message.inner_text().split()) == ANSWER  # no thought in the answer
    reasoning.locator("summary").click()
    assert reasoning.evaluate("d => d.open") is True
    shown = " ".join(reasoning.inner_text().split())
    assert shown.endswith(THOUGHTS) and shown.count("t0001") == 1  # no gap, no duplicate

    page.reload()  # stored: closed, kept, the answer alone in the message
    reasoning = page.locator("[data-part=reasoning]").last
    assert reasoning.evaluate("d => d.open") is False
    stored = reasoning.locator(".reasoning-text").text_content()  # closed: not laid out
    assert " ".join(stored.split()) == THOUGHTS
    assert " ".join(page.locator("[data-role=assistant]").last.inner_text().split()) == ANSWER


def test_the_demo_model_thinks_before_it_answers(page, live_site):
    open_new_conversation(page, live_site)
    send(page, "Show me thinking")
    page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=30_000)
    reasoning = page.locator("[data-part=reasoning]").last
    reasoning.locator("summary").click()
    assert " ".join(reasoning.locator(".reasoning-text").inner_text().split()) == " ".join(
        demo_reasoning_text("Show me thinking").split()
    )
    answer = page.locator("[data-role=assistant]").last.inner_text()
    assert "offline demo model" in answer and "I am the offline demo" not in answer
    assert demo_reply_text("Show me thinking").startswith("This is the **offline demo model**")
