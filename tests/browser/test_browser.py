"""The site in headless Chromium: Daphne in its own process, a scripted upstream on loopback."""

import random
import re
import time

import pytest
from live import LONG_REPLY_TOKENS, log_in, shown_as
from scripted_upstream import numbered_words

from conversations.demo import demo_reply_text

pytestmark = pytest.mark.browser


def start_conversation(page, site):
    log_in(page, site)
    page.get_by_role("button", name="New conversation").first.click()
    page.wait_for_url(f"{site.url}/c/*/")
    # The socket is open once the page has asked to catch up.
    page.locator("#chat[data-socket=open]").wait_for()


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
    assert reply.inner_text() == shown_as(page, expected)
    assert reply.locator("strong").first.inner_text() == "offline demo model"
    assert reply.locator("table").count() == 1
    assert reply.get_by_role("button", name="Copy").count() == 1
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
    assert reply.inner_text() == shown_as(page, expected)
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


# --- replies outlive their sockets --------------------------------------------------

LONG_TEXT = "".join(numbered_words(LONG_REPLY_TOKENS)).strip()


def send_message(page, text):
    composer = page.locator("textarea[name=content]")
    composer.fill(text)
    composer.press("Enter")


def reply_text(page) -> str:
    return page.locator("[data-role=assistant]").last.inner_text()


def reply_status(page) -> str | None:
    return page.locator("[data-role=assistant]").last.get_attribute("data-status")


def wait_for_text(page, length: int) -> None:
    page.wait_for_function(
        "n => { const m = [...document.querySelectorAll('[data-role=assistant]')].pop();"
        " return m && m.innerText.length >= n; }",
        arg=length,
    )


def test_reloads_mid_reply_lose_and_duplicate_nothing(page, live_site):
    start_conversation(page, live_site)
    send_message(page, "long-reply please")
    rng = random.Random(7)
    seen = []
    for _ in range(10):
        page.locator("[data-role=assistant]").last.wait_for()
        time.sleep(rng.uniform(0.1, 0.9))
        text = reply_text(page)
        assert LONG_TEXT.startswith(text.strip()), "the page showed a gap or a duplicate"
        seen.append(len(text))
        page.reload()
        page.locator("#chat[data-socket=open]").wait_for()
    assert reply_status(page) == "streaming", "the reply ended before the tenth reload"
    assert max(seen) > 0
    page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=30_000)
    assert reply_text(page).strip() == LONG_TEXT
    (stored,) = live_site.query(
        "SELECT content FROM conversations_message WHERE role = 'assistant' "
        "ORDER BY id DESC LIMIT 1"
    )
    assert stored[0].strip() == LONG_TEXT


def test_stop_keeps_the_text_and_closes_the_upstream(page, live_site, live_upstream):
    start_conversation(page, live_site)
    send_message(page, "long-reply please")
    wait_for_text(page, 60)
    exchange = live_upstream.server.exchanges[-1]
    clicked = time.monotonic()
    page.get_by_role("button", name="Stop").click()
    while not exchange.disconnected.is_set() and time.monotonic() < clicked + 1.0:
        time.sleep(0.001)
    assert exchange.disconnected.is_set(), "the upstream request was not closed within 1 s"
    print(f"stop: upstream connection closed {1000 * (time.monotonic() - clicked):.0f} ms after")
    page.locator("[data-role=assistant][data-status=stopped]").wait_for(timeout=5_000)
    shown = reply_text(page)
    shown = shown.strip()
    assert LONG_TEXT.startswith(shown) and len(shown) > 0
    (stored,) = live_site.query(
        "SELECT content, status FROM conversations_message ORDER BY id DESC LIMIT 1"
    )
    assert (stored[0].strip(), stored[1]) == (shown, "stopped")

    # Continue carries the same message on, after the text already there.
    page.get_by_role("button", name="Continue").click()
    page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=15_000)
    continued = reply_text(page)
    assert continued.startswith(shown) and len(continued) > len(shown)
    assert page.locator("[data-role=assistant]").count() == 1
    (stored,) = live_site.query(
        "SELECT content, status FROM conversations_message ORDER BY id DESC LIMIT 1"
    )
    assert stored[1] == "complete"
    assert stored[0].startswith(shown)
    assert continued == shown_as(page, stored[0])


def test_two_tabs_share_one_live_reply(browser, live_site):
    context = browser.new_context(base_url=live_site.url)
    first = context.new_page()
    start_conversation(first, live_site)
    send_message(first, "long-reply please")
    # The first message stores the conversation; the page takes its address.
    first.wait_for_url(re.compile(r"/c/\d+/$"))
    second = context.new_page()
    second.goto(first.url)  # mid-reply
    second.locator("#chat[data-socket=open]").wait_for()
    wait_for_text(second, 30)  # the second tab sees the reply the first one started
    send_message(second, "a second message")
    second.get_by_role("alert").filter(has_text="still being written").wait_for()
    second.get_by_role("button", name="Stop").click()
    for tab in (first, second):
        tab.locator("[data-role=assistant][data-status=stopped]").wait_for(timeout=5_000)
    assert reply_text(first) == reply_text(second)
    assert first.locator("[data-role=user]").count() == 1
    context.close()


# --- model output is untrusted ------------------------------------------------------------


def test_hostile_output_runs_nothing_and_fetches_nothing_from_elsewhere(page, live_site):
    requests, dialogs, violations = [], [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    start_conversation(page, live_site)
    send_message(page, "hostile output please")
    reply = page.locator("[data-role=assistant][data-status=complete]")
    reply.wait_for(timeout=30_000)
    page.reload()  # the stored rendering too
    page.locator("[data-role=assistant][data-status=complete]").wait_for()
    for link in page.locator(".message a").all():
        assert link.get_attribute("rel") == "noopener noreferrer nofollow"
        assert link.get_attribute("target") == "_blank"
        assert link.get_attribute("href").split(":")[0] in {"http", "https", "mailto"}
    page.wait_for_load_state("networkidle")  # anything that would load has tried

    assert dialogs == []
    assert violations == []  # nothing even tried to run inline script
    foreign = [url for url in requests if not url.startswith((live_site.url, "data:"))]
    assert foreign == []
    assert any("/static/" in url for url in requests)  # the listener did see requests
    messages = page.locator(".message")
    for tag in ("img", "script", "iframe", "svg", "object", "embed", "form", "style", "math"):
        assert messages.locator(tag).count() == 0, tag
    # The attacks are shown as text.
    assert "<script>alert(1)</script>" in page.locator("[data-role=assistant]").inner_text()
