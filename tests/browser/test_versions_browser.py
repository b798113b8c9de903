"""Versions in Chromium, at desktop and phone widths: regenerate and edit keep the
earlier versions, Previous/Next version switch between them across reloads, and the
prompt follows the branch on screen.

The upstream numbers its replies and writes back the history it was sent, so the page
shows which branch reached it. Screenshots go to tests/screenshots/ (ignored by git).
"""

import itertools
import re

import pytest
from live import LiveSite
from test_settings_browser import SCREENSHOTS, WIDTHS, logged_in

from conversations.demo import Exchange, ServerThread, chunk

pytestmark = pytest.mark.browser

replies = itertools.count(1)


async def numbered_echo(exchange: Exchange) -> None:
    request = exchange.json
    if not request.get("stream"):  # a title
        choice = {"index": 0, "message": {"role": "assistant", "content": "Versions"}}
        body = {"object": "chat.completion", "choices": [{**choice, "finish_reason": "stop"}]}
        await exchange.respond_json(200, body)
        return
    said = [m["content"] for m in request["messages"]]
    text = f"reply {next(replies)} to {said[-1]} (history: {' | '.join(said)})"
    await exchange.start()
    await exchange.send_event(chunk("c1", request["model"], {"content": text}))
    await exchange.send_event(chunk("c1", request["model"], {}, "stop"))
    await exchange.send_event("[DONE]")


@pytest.fixture(scope="module")
def versions_site(tmp_path_factory):
    upstream = ServerThread(numbered_echo).start()
    site = LiveSite(tmp_path_factory.mktemp("versions-site"), upstream.base_url, CHAT_MODEL="m")
    site.start()
    yield site
    site.stop()
    upstream.stop()


def settled(page, count: int):
    """Wait until ``count`` turns are shown and every reply has ended."""
    page.wait_for_function(
        f"() => document.querySelectorAll('#messages .turn').length === {count}"
        " && !document.querySelector('[data-status=streaming]')"
    )


def texts(page) -> list[str]:
    return [t.strip() for t in page.locator("#messages .message").all_inner_texts()]


def reloaded(page):
    page.reload()
    page.locator("#chat[data-socket=open]").wait_for()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_regenerate_and_edit_keep_versions_across_reloads(browser, versions_site, width):
    with logged_in(browser, versions_site, width) as page:
        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        page.locator("textarea[name=content]").fill("alpha")
        page.locator("textarea[name=content]").press("Enter")
        settled(page, 2)
        first = texts(page)[1]
        assert first.startswith("reply ") and first.endswith("to alpha (history: alpha)")

        # Regenerate: a second version, "2 / 2", the first kept behind Previous version.
        page.get_by_role("button", name="Regenerate").click()
        reply = page.locator(".turn-assistant").last
        reply.locator(".version-label").filter(has_text="2 / 2").wait_for()
        settled(page, 2)
        second = texts(page)[1]
        assert second != first and second.endswith("to alpha (history: alpha)")
        reloaded(page)
        assert texts(page) == ["alpha", second]
        assert page.locator(".turn-assistant .version-label").inner_text() == "2 / 2"

        page.get_by_role("button", name="Previous version").click()
        page.locator(".turn-assistant .version-label").filter(has_text="1 / 2").wait_for()
        assert texts(page) == ["alpha", first]
        assert page.get_by_role("button", name="Previous version").is_disabled()
        reloaded(page)  # the version chosen stays chosen
        assert texts(page) == ["alpha", first]

        # Edit: a new branch from the user's message; the original stays a version.
        page.get_by_role("button", name="Edit").click()
        editor = page.locator(".edit-form:not([hidden]) textarea")
        assert editor.evaluate("el => el === document.activeElement")
        editor.fill("beta")
        editor.press("Enter")
        page.locator(".turn-user .version-label").filter(has_text="2 / 2").wait_for()
        settled(page, 2)
        edited = texts(page)
        assert edited[0] == "beta" and edited[1].endswith("to beta (history: beta)")
        page.locator("#composer-content").fill("gamma")
        page.locator("#composer-content").press("Enter")
        settled(page, 4)
        assert texts(page)[3].endswith("(history: beta | " + edited[1] + " | gamma)")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"versions-{width}.png", full_page=True)
        for button in page.get_by_role("button", name=re.compile("(Previous|Next) version")).all():
            box = button.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTHS[width]["width"]

        # Back to the original message: its branch comes back as it was, and a message
        # sent there carries that branch's history.
        reloaded(page)
        page.locator(".turn-user").first.get_by_role("button", name="Previous version").click()
        page.locator(".turn-user .version-label").filter(has_text="1 / 2").wait_for()
        settled(page, 2)
        assert texts(page) == ["alpha", first]
        page.locator("#composer-content").fill("delta")
        page.locator("#composer-content").press("Enter")
        settled(page, 4)
        assert texts(page)[3].endswith(f"(history: alpha | {first} | delta)")
        reloaded(page)
        assert texts(page)[:3] == ["alpha", first, "delta"]
        page.locator(".turn-user").first.get_by_role("button", name="Next version").click()
        page.locator(".turn-user .version-label").filter(has_text="2 / 2").wait_for()
        settled(page, 4)
        assert texts(page)[0] == "beta" and texts(page)[2] == "gamma"


def test_edit_is_cancelled_with_escape_and_nothing_changes(browser, versions_site):
    with logged_in(browser, versions_site, "desktop") as page:
        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        page.locator("textarea[name=content]").fill("keep me")
        page.locator("textarea[name=content]").press("Enter")
        settled(page, 2)
        edit = page.get_by_role("button", name="Edit")
        edit.click()
        editor = page.locator(".edit-form:not([hidden]) textarea")
        editor.fill("changed my mind")
        editor.press("Escape")
        assert page.locator(".edit-form:not([hidden])").count() == 0
        assert edit.evaluate("el => el === document.activeElement")
        assert texts(page)[0] == "keep me"
        assert page.locator("textarea[name=content]").count() == 1  # the composer's, alone
