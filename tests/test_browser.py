"""The site in headless Chromium: Daphne in its own process, a scripted upstream on loopback."""

import time

import pytest
from conftest import log_in

from conversations.demo import demo_reply_text

pytestmark = pytest.mark.browser


def start_conversation(page, site):
    log_in(page, site)
    page.get_by_role("button", name="New conversation").first.click()
    page.wait_for_url(f"{site.url}/c/*/")
    # The socket is open once the page has asked to catch up.
    page.wait_for_function("document.getElementById('connection').hidden")


def watch_reply(page, timeout=20.0) -> list[int]:
    """Poll the last reply until it stops streaming; return the text lengths seen meanwhile."""
    reply = page.locator("[data-role=assistant]").last
    reply.wait_for()
    lengths = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = reply.get_attribute("data-status")
        if status != "streaming":
            return lengths
        lengths.append(len(reply.inner_text()))
        time.sleep(0.05)
    raise AssertionError("the reply was still streaming at the deadline")


def test_a_typed_message_streams_a_reply_that_survives_a_reload(page, live_site):
    start_conversation(page, live_site)
    composer = page.locator("textarea[name=content]")
    composer.fill("Hello there")
    composer.press("Shift+Enter")
    composer.press_sequentially("second line")
    composer.press("Enter")

    page.locator("[data-role=user]").last.wait_for()
    assert page.locator("[data-role=user]").last.inner_text() == "Hello there\nsecond line"
    assert composer.input_value() == ""  # sent, so the composer is empty again
    assert page.get_by_role("button", name="Stop reply").is_visible()

    lengths = watch_reply(page)
    growing = sorted({n for n in lengths if n > 0})
    assert len(growing) >= 3, f"the reply did not visibly grow: {lengths}"

    reply = page.locator("[data-role=assistant]").last
    assert reply.get_attribute("data-status") == "complete"
    expected = demo_reply_text("Hello there\nsecond line")
    assert reply.inner_text() == expected
    assert not page.get_by_role("button", name="Stop reply").is_visible()

    (stored,) = live_site.query(
        "SELECT content, status, completion_tokens FROM conversations_message "
        "WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )
    assert stored[:2] == (expected, "complete")
    assert stored[2] > 0

    page.reload()
    reply = page.locator("[data-role=assistant]").last
    assert reply.get_attribute("data-status") == "complete"
    assert reply.inner_text() == expected
    assert page.locator("[data-role=user]").last.inner_text() == "Hello there\nsecond line"


def test_upstream_errors_are_shown_in_the_page(page, live_site):
    start_conversation(page, live_site)
    page.locator("textarea[name=content]").fill("fail-404 now")
    page.locator("textarea[name=content]").press("Enter")
    reply = page.locator("[data-role=assistant][data-status=failed]")
    reply.wait_for()
    alert = page.get_by_role("alert").filter(has_text="does not exist")
    assert "The model `scripted-model` does not exist" in alert.inner_text()


def test_a_cut_stream_ends_interrupted_with_its_text(page, live_site):
    start_conversation(page, live_site)
    page.locator("textarea[name=content]").fill("cut-stream please")
    page.locator("textarea[name=content]").press("Enter")
    reply = page.locator("[data-role=assistant][data-status=interrupted]")
    reply.wait_for()
    assert reply.inner_text() == "Half a reply"
    page.reload()
    assert page.locator("[data-role=assistant]").last.get_attribute("data-status") == "interrupted"


def test_a_refused_message_stays_in_the_composer(page, live_site):
    start_conversation(page, live_site)
    composer = page.locator("textarea[name=content]")
    composer.fill("a long one")
    composer.press("Enter")
    page.locator("[data-role=assistant]").last.wait_for()
    # A second message while the first reply streams is refused, and not lost.
    composer.fill("too soon")
    composer.press("Enter")
    notice = page.get_by_role("alert").filter(has_text="still being written")
    notice.wait_for()
    assert composer.input_value() == "too soon"
    assert page.locator("[data-role=user]").count() == 1


def test_pages_need_a_login(page, live_site):
    page.goto("/")
    assert "/accounts/login/" in page.url
    assert page.locator("input[name=username]").is_visible()
    assert page.locator("input[name=password]").is_visible()
