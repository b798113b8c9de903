"""The Daphne process stops mid-reply (SIGTERM) or dies (SIGKILL): no reply stays streaming."""

import re
import signal
import time

import pytest
from live import LONG_REPLY_TOKENS, LiveSite, log_in
from scripted_upstream import numbered_words

pytestmark = pytest.mark.browser

LONG_TEXT = "".join(numbered_words(LONG_REPLY_TOKENS)).strip()


@pytest.fixture
def own_site(tmp_path, live_upstream):
    """A site of its own, since these tests stop its process."""
    site = LiveSite(tmp_path, live_upstream.base_url, CHAT_CHECKPOINT_INTERVAL="0.5").start()
    yield site
    site.stop()


# Every websocket's close code, in order: the page reconnects at once, and a reconnection
# refused by the stopped site closes with 1006, so the page's last code is not the first.
RECORD_CLOSE_CODES = """(() => {
  const Native = window.WebSocket;
  window.closeCodes = [];
  window.WebSocket = function (...args) {
    const socket = new Native(...args);
    socket.addEventListener("close", (event) => window.closeCodes.push(event.code));
    return socket;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, Native);
})();"""


def start_long_reply(browser, site):
    context = browser.new_context(base_url=site.url)
    context.add_init_script(RECORD_CLOSE_CODES)
    page = context.new_page()
    page.set_default_timeout(15_000)
    log_in(page, site)
    page.get_by_role("button", name="New conversation").first.click()
    page.locator("#chat[data-socket=open]").wait_for()
    page.locator("textarea[name=content]").fill("long-reply please")
    page.locator("textarea[name=content]").press("Enter")
    page.wait_for_function(
        "() => { const m = document.querySelector('[data-role=assistant]');"
        " return m && m.innerText.length > 200; }"
    )
    return context, page


def last_reply(site):
    (row,) = site.query(
        "SELECT content, status, error FROM conversations_message "
        "WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )
    return row


def test_sigterm_stores_the_reply_as_interrupted_with_its_text(browser, own_site):
    context, page = start_long_reply(browser, own_site)
    shown = page.locator("[data-role=assistant]").inner_text()
    own_site.stop(signal.SIGTERM)
    # The page got the final element before its socket closed (1001: it reconnects).
    page.locator("[data-role=assistant][data-status=interrupted]").wait_for(timeout=2_000)
    page.locator("#chat[data-socket=closed]").wait_for(timeout=2_000)
    assert page.evaluate("window.closeCodes[0]") == 1001
    assert "Exception inside application" not in (own_site.tmp / "daphne.log").read_text()

    content, status, error = last_reply(own_site)
    assert status == "interrupted"
    assert "restarted" in error
    # Everything the page showed is stored (and perhaps a frame more).
    assert content.strip().startswith(shown.strip())
    assert LONG_TEXT.startswith(content.strip())

    own_site.launch()
    page.reload()
    page.locator("[data-role=assistant][data-status=interrupted]").wait_for()
    assert page.get_by_role("button", name="Continue").is_visible()
    context.close()


def test_after_sigkill_no_reply_stays_streaming(browser, own_site):
    context, page = start_long_reply(browser, own_site)
    deadline = time.monotonic() + 10
    while not last_reply(own_site)[0] and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first checkpoint (every 0.5 s here) is stored
    shown = page.locator("[data-role=assistant]").inner_text().strip()
    own_site.stop(signal.SIGKILL)

    content, status, _ = last_reply(own_site)
    assert status == "streaming"  # nobody could mark it: the process was killed
    assert content and LONG_TEXT.startswith(content.strip())
    lost = max(0, len(shown) - len(content.strip()))
    print(f"SIGKILL: {len(shown)} chars shown, {len(content.strip())} stored, {lost} lost")

    own_site.launch()  # the new process ends what the dead one left streaming
    content_after, status, error = last_reply(own_site)
    assert status == "interrupted"
    assert "stopped while this reply" in error
    assert content_after == content
    page.reload()
    reply = page.locator("[data-role=assistant]")
    assert reply.get_attribute("data-status") == "interrupted"
    assert reply.inner_text().strip() == content.strip()
    context.close()


def test_a_new_pages_socket_reconnects_to_its_stored_conversation(browser, own_site):
    context, page = start_long_reply(browser, own_site)  # from a new page
    path = page.url.removeprefix(own_site.url)
    assert re.fullmatch(r"/c/\d+/", path)
    own_site.stop(signal.SIGTERM)
    page.locator("[data-role=assistant][data-status=interrupted]").wait_for(timeout=5_000)
    own_site.launch()
    # The page reconnects by itself (no reload), to the conversation's socket: it is
    # brought up to date, and its next message goes on in the same conversation.
    page.locator("#chat[data-socket=open]").wait_for(timeout=15_000)
    page.locator("textarea[name=content]").fill("and then?")
    page.locator("textarea[name=content]").press("Enter")
    page.locator("[data-role=assistant]").nth(1).wait_for()
    page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=15_000)
    assert own_site.query("SELECT count(*) FROM conversations_conversation") == [(1,)]
    assert page.url.removeprefix(own_site.url) == path
    assert page.locator("[data-role=user]").count() == 2
    context.close()
