"""The model picker and the Settings panel in Chromium, at desktop and phone widths.

The upstream lists two models and writes back what it was asked with, so the page shows
that the chosen model, system prompt and temperature reached it. Screenshots go to
tests/screenshots/ (ignored by git).
"""

import contextlib
import re
from pathlib import Path

import pytest
from live import LiveSite, log_in

from conversations.demo import Exchange, ServerThread, chunk

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
WIDTHS = {"desktop": {"width": 1100, "height": 800}, "phone": {"width": 360, "height": 740}}


async def echo_settings(exchange: Exchange) -> None:
    if exchange.method == "GET" and exchange.path.endswith("/models"):
        data = [{"id": name, "object": "model"} for name in ("alpha-7b", "beta-70b")]
        await exchange.respond_json(200, {"object": "list", "data": data})
        return
    request = exchange.json
    if not request.get("stream"):  # the request for a title
        choice = {"index": 0, "message": {"role": "assistant", "content": "Echoed"}}
        body = {"object": "chat.completion", "choices": [{**choice, "finish_reason": "stop"}]}
        await exchange.respond_json(200, body)
        return
    system = [m["content"] for m in request["messages"] if m["role"] == "system"]
    said = (
        f"model={request['model']} system={system[0] if system else '-'} "
        f"temperature={request.get('temperature', '-')}"
    )
    await exchange.start()
    await exchange.send_event(chunk("c1", request["model"], {"content": said}))
    await exchange.send_event(chunk("c1", request["model"], {}, "stop"))
    await exchange.send_event("[DONE]")


@pytest.fixture(scope="module")
def settings_site(tmp_path_factory):
    upstream = ServerThread(echo_settings).start()
    site = LiveSite(tmp_path_factory.mktemp("settings-site"), upstream.base_url, CHAT_MODEL="")
    site.start()
    yield site
    site.stop()
    upstream.stop()


@contextlib.contextmanager
def logged_in(browser, site, width: str, **options):
    """A page of a new browser context at ``width``, logged in to ``site``."""
    context = browser.new_context(base_url=site.url, viewport=WIDTHS[width], **options)
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        log_in(page, site)
        yield page
    finally:
        context.close()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_chosen_model_and_settings_reach_the_model_and_stay_after_a_reload(
    browser, settings_site, width
):
    count = "SELECT count(*) FROM conversations_conversation"
    with logged_in(browser, settings_site, width) as page:
        (before,) = settings_site.query(count)
        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        assert page.url.endswith("/c/new/")

        picker = page.locator("select[name=model]")
        assert picker.input_value() == "alpha-7b"
        box = picker.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTHS[width]["width"]
        picker.select_option("beta-70b")
        page.get_by_text("it applies from the next reply").wait_for()

        page.get_by_text("Settings", exact=True).click()
        page.locator("textarea[name=system_prompt]").fill("Be brief.")
        page.locator("input[name=temperature]").fill("0.4")
        page.get_by_role("button", name="Save settings").click()
        page.get_by_text("it applies from the next reply").wait_for()
        assert page.locator("details.settings-panel").evaluate("d => d.open") is True
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"settings-{width}.png", full_page=True)

        page.locator("textarea[name=content]").fill("hi")
        page.locator("textarea[name=content]").press("Enter")
        reply = page.locator("[data-role=assistant][data-status=complete]").last
        reply.wait_for()
        assert reply.inner_text().strip() == "model=beta-70b system=Be brief. temperature=0.4"
        assert "beta-70b" in page.locator(".turn-assistant .model").last.inner_text()
        # Settings chosen, nothing stored; the first message stored the conversation,
        # whose address, title and link the page now shows.
        assert settings_site.query(count) == [(before[0] + 1,)]
        assert re.search(r"/c/\d+/$", page.url)
        path = page.url.removeprefix(settings_site.url)
        assert page.title() == "hi · Chat"
        if width == "desktop":
            link = page.locator(f'#sidebar a[href="{path}"]')
            assert link.get_attribute("aria-current") == "page" and link.inner_text() == "hi"
        page.get_by_role("button", name="Rename").wait_for()

        page.reload()
        page.locator("#chat[data-socket=open]").wait_for()
        assert page.locator("select[name=model]").input_value() == "beta-70b"
        page.get_by_text("Settings", exact=True).click()
        assert page.locator("textarea[name=system_prompt]").input_value() == "Be brief."
        assert page.locator("input[name=temperature]").input_value() == "0.4"
        page.screenshot(path=SCREENSHOTS / f"conversation-{width}.png", full_page=True)


def test_at_phone_width_the_conversation_list_is_a_drawer(browser, settings_site):
    with logged_in(browser, settings_site, "phone") as page:
        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        page.locator("textarea[name=content]").fill("drawer test")
        page.locator("textarea[name=content]").press("Enter")
        page.locator("[data-role=assistant][data-status=complete]").wait_for()
        first = page.url
        sidebar = page.locator("#sidebar")
        button = page.get_by_role("button", name="Conversations")
        assert sidebar.is_hidden() and button.get_attribute("aria-expanded") == "false"
        button.click()
        sidebar.get_by_role("button", name="New conversation").click()  # from the drawer
        page.wait_for_url(lambda url: url != first)
        page.locator("#chat[data-socket=open]").wait_for()
        assert sidebar.is_hidden()

        button.click()
        assert sidebar.is_visible() and button.get_attribute("aria-expanded") == "true"
        box = sidebar.bounding_box()
        assert box["x"] == 0 and box["width"] <= 360
        page.screenshot(path=SCREENSHOTS / "drawer-phone.png")
        page.keyboard.press("Escape")
        assert sidebar.is_hidden()

        button.click()
        sidebar.locator(f'a[href="{first.removeprefix(settings_site.url)}"]').click()
        page.wait_for_url(first)
        page.locator("#chat[data-socket=open]").wait_for()
        assert page.locator("#sidebar").is_hidden()
        assert "drawer test" in page.locator("[data-role=user]").first.inner_text()

    with logged_in(browser, settings_site, "desktop") as page:
        assert page.get_by_role("button", name="Conversations").is_hidden()
        assert page.locator("#sidebar").is_visible()


def test_dark_theme_relative_times_and_jump_to_latest(browser, settings_site):
    with logged_in(browser, settings_site, "phone", color_scheme="dark") as page:
        page.locator("#sidebar").evaluate("s => s.querySelector('button').click()")
        page.locator("#chat[data-socket=open]").wait_for()
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(21, 23, 27)"  # the dark --bg
        for n in range(4):
            page.locator("textarea[name=content]").fill(f"message {n}")
            page.locator("textarea[name=content]").press("Enter")
            page.locator("[data-role=assistant][data-status=complete]").nth(n).wait_for()
        assert page.locator(".turn-meta time").first.inner_text() == "just now"
        assert page.locator(".turn-meta time").first.get_attribute("title")

        jump = page.get_by_role("button", name="Jump to latest")
        assert jump.is_hidden()
        page.evaluate("window.scrollTo(0, 0)")
        jump.wait_for()
        page.screenshot(path=SCREENSHOTS / "dark-phone.png")
        jump.click()
        page.wait_for_function(
            "() => { const d = document.scrollingElement;"
            " return d.scrollHeight - d.scrollTop - d.clientHeight < 120; }"
        )
        assert jump.is_hidden()


def test_search_finds_a_conversation_by_a_word_in_a_message_and_shortcuts_work(
    browser, settings_site
):
    with logged_in(browser, settings_site, "desktop") as page:
        page.keyboard.press("Control+Shift+O")  # a new conversation
        page.locator("#chat[data-socket=open]").wait_for()
        page.locator("textarea[name=content]").fill("Tell me about the axolotl please")
        page.locator("textarea[name=content]").press("Enter")
        page.locator("[data-role=assistant][data-status=complete]").wait_for()
        wanted = page.url.removeprefix(settings_site.url)
        page.locator("#composer-content").blur()
        page.keyboard.press("Control+Shift+O")
        page.wait_for_url(lambda url: not url.endswith(wanted))
        page.locator("#chat[data-socket=open]").wait_for()

        page.keyboard.press("Control+k")
        search = page.locator("input[name=q]")
        assert search.evaluate("el => el === document.activeElement")
        search.press_sequentially("axolo")
        results = page.locator("#conversation-results")
        results.locator(f'a[href="{wanted}"]').wait_for()
        page.wait_for_function(
            "() => document.querySelectorAll('#conversation-results a').length === 1"
        )
        assert "axolotl" in results.inner_text()  # its title (first words) or a snippet
        page.screenshot(path=SCREENSHOTS / "search-desktop.png")
        search.fill("nothing-like-this-word")
        page.get_by_text("Nothing found for").wait_for()
        results = page.locator("#conversation-results")
        search.fill("axolotl")
        results.locator(f'a[href="{wanted}"]').click()
        page.wait_for_url(f"{settings_site.url}{wanted}")


def test_a_conversation_is_renamed_in_place(browser, settings_site):
    with logged_in(browser, settings_site, "desktop") as page:
        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        assert page.get_by_role("button", name="Rename").count() == 0  # nothing stored yet
        page.locator("textarea[name=content]").fill("Hello")
        page.locator("textarea[name=content]").press("Enter")
        page.locator("[data-role=assistant]:not([data-status=streaming])").wait_for()
        page.get_by_role("button", name="Rename").click()
        title = page.locator("input[name=title]")
        assert title.evaluate("el => el === document.activeElement")
        title.fill("Garden plans")
        title.press("Enter")
        page.locator("#conversation-title", has_text="Garden plans").wait_for()
        assert page.locator("#rename-form").is_hidden()
        path = page.url.removeprefix(settings_site.url)
        assert page.locator(f'#sidebar a[href="{path}"]').inner_text() == "Garden plans"
        page.reload()
        assert page.locator("#conversation-title").inner_text() == "Garden plans"


def test_the_conversation_list_loads_more_when_scrolled_to_its_end(browser, settings_site):
    make = (
        "from django.contrib.auth import get_user_model; "
        "from conversations.models import Conversation; "
        "u = get_user_model().objects.get(username='reader'); "
        "Conversation.objects.bulk_create("
        "Conversation(owner=u, title=f'Old {n:03d}') for n in range(80))"
    )
    settings_site.manage("shell", "-c", make)
    with logged_in(browser, settings_site, "desktop") as page:
        links = page.locator("#conversation-results a")
        assert links.count() == 50
        total = page.evaluate(
            "() => fetch('/search/?page=1').then(r => r.text())"
            ".then(t => (t.match(/conversation-link-/g) || []).length)"
        )
        assert total == 50
        while page.locator(".load-more").count():
            shown = links.count()
            page.locator(".load-more").scroll_into_view_if_needed()
            page.wait_for_function(
                "n => document.querySelectorAll('#conversation-results a').length > n", arg=shown
            )
        assert links.count() >= 80
        assert page.locator("#conversation-results", has_text="Old 000").count() == 1


# The keyboard starts from the top of the page, as after it loads without autofocus.
FROM_THE_TOP = "() => { document.body.tabIndex = -1; document.body.focus(); }"
FOCUSED = """() => { const e = document.activeElement;
  return e.id || e.getAttribute("name") || e.getAttribute("aria-label") || e.innerText.trim(); }"""


@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_keyboard_goes_through_the_page_in_a_sensible_order(browser, settings_site, width):
    with logged_in(browser, settings_site, width) as page:
        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        composer = page.locator("textarea[name=content]")
        assert composer.evaluate("el => el === document.activeElement")  # ready to type
        composer.fill("focus order")
        composer.press("Enter")
        page.locator("[data-role=assistant][data-status=complete]").wait_for()
        assert composer.evaluate("el => el === document.activeElement")  # still there

        page.evaluate(FROM_THE_TOP)
        page.keyboard.press("Tab")
        assert page.evaluate(FOCUSED) == "Skip to the message box"
        page.keyboard.press("Enter")
        assert page.evaluate(FOCUSED) == "composer-content"

        page.evaluate(FROM_THE_TOP)
        order = []
        for _ in range(300):  # the list holds this module's earlier conversations too
            page.keyboard.press("Tab")
            order.append(page.evaluate(FOCUSED))
            if order[-1] == "Send":
                break
        # The site's header, the list (behind "Conversations" at phone width), the
        # conversation's header, its messages' controls, then the composer.
        wanted = ["Skip to the message box", "Log out", "Rename", "id_model", "Settings"]
        wanted += ["Edit", "Regenerate", "composer-content", "Send"]
        if width == "desktop":
            wanted[2:2] = ["New conversation", "conversation-q"]
        else:
            wanted[1:1] = ["Conversations"]
            assert "conversation-q" not in order  # the closed drawer is out of reach
        assert [name for name in order if name in wanted] == wanted
