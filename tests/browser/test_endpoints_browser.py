"""Endpoints in Chromium: an administrator adds a second server in the admin, and a
conversation picks its model from the picker, grouped by server, at desktop and phone
widths. Each upstream writes back which server it is, the model and whether the key came.
"""

import pytest
from live import LiveSite
from test_settings_browser import SCREENSHOTS, WIDTHS, logged_in

from conversations.demo import Exchange, ServerThread, chunk

pytestmark = pytest.mark.browser

KEY = "sk-browser-endpoint-key-42"


def server_named(name: str, models: list[str]):
    async def handler(exchange: Exchange) -> None:
        if exchange.method == "GET" and exchange.path.endswith("/models"):
            data = [{"id": model, "object": "model"} for model in models]
            await exchange.respond_json(200, {"object": "list", "data": data})
            return
        request = exchange.json
        keyed = exchange.headers.get("Authorization") or exchange.headers.get("authorization")
        key = "yes" if keyed == f"Bearer {KEY}" else "no"
        said = f"server={name} model={request['model']} key={key}"
        if not request.get("stream"):  # the title
            choice = {"index": 0, "message": {"role": "assistant", "content": "Two servers"}}
            body = {"object": "chat.completion", "choices": [{**choice, "finish_reason": "stop"}]}
            await exchange.respond_json(200, body)
            return
        await exchange.start()
        await exchange.send_event(chunk("c1", request["model"], {"content": said}))
        await exchange.send_event(chunk("c1", request["model"], {}, "stop"))
        await exchange.send_event("[DONE]")

    return handler


@pytest.fixture(scope="module")
def two_server_site(tmp_path_factory):
    default = ServerThread(server_named("A", ["alpha-7b", "beta-70b"])).start()
    other = ServerThread(server_named("B", ["gamma-1b"])).start()
    site = LiveSite(tmp_path_factory.mktemp("endpoints-site"), default.base_url, CHAT_MODEL="")
    site.start()
    yield site, other
    site.stop()
    default.stop()
    other.stop()


def add_endpoint(page, base_url):
    page.goto("/admin/conversations/endpoint/add/")
    page.fill("input[name=name]", "Lab server")
    page.fill("input[name=base_url]", base_url)
    page.fill("input[name=api_key]", KEY)
    page.click("input[name=_save]")
    page.get_by_text("was added successfully").wait_for()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_a_model_of_an_admins_endpoint_writes_the_reply(browser, two_server_site, width):
    site, other = two_server_site
    with logged_in(browser, site, width) as page:
        if width == "desktop":
            add_endpoint(page, other.base_url)
            assert KEY not in page.content()
            page.locator("a", has_text="Lab server").first.click()
            page.get_by_text("Set (encrypted; not shown)").wait_for()
            assert KEY not in page.content()
            assert page.locator("input[name=api_key]").input_value() == ""
            page.screenshot(path=SCREENSHOTS / "endpoint-admin.png", full_page=True)
            page.goto("/")

        page.get_by_role("button", name="New conversation").first.click()
        page.locator("#chat[data-socket=open]").wait_for()
        picker = page.locator("select[name=model]")
        groups = picker.locator("optgroup")
        assert [groups.nth(i).get_attribute("label") for i in range(groups.count())] == [
            "Default",
            "Lab server",
        ]
        assert picker.locator("optgroup[label='Lab server'] option").all_inner_texts() == [
            "gamma-1b"
        ]
        picker.select_option(label="gamma-1b")
        page.get_by_text("it applies from the next reply").wait_for()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"endpoint-picker-{width}.png", full_page=True)

        composer = page.locator("textarea[name=content]")
        composer.fill("Which server?")
        composer.press("Enter")
        reply = page.locator("[data-role=assistant][data-status=complete]").last
        reply.wait_for()
        assert reply.inner_text().strip() == "server=B model=gamma-1b key=yes"
        assert "gamma-1b · Lab server" in page.locator(".turn-assistant .model").last.inner_text()

        # Back to a model of the default server: from the next reply on.
        picker.select_option(label="beta-70b")
        page.get_by_text("it applies from the next reply").wait_for()
        composer.fill("And now?")
        composer.press("Enter")
        page.locator("[data-role=assistant][data-status=complete]").nth(1).wait_for()
        replies = page.locator("[data-role=assistant]")
        assert replies.nth(1).inner_text().strip() == "server=A model=beta-70b key=no"

        page.reload()
        page.locator("#chat[data-socket=open]").wait_for()
        assert page.locator("select[name=model] option:checked").inner_text() == "beta-70b"
        models = page.locator(".turn-assistant .model").all_inner_texts()
        assert "Lab server" in models[0] and "Lab server" not in models[1]
