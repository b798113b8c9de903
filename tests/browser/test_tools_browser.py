"""Tool calls in Chromium: shown live and after a reload, Allow and Deny, Stop during a tool.

The site runs with two MCP servers: its own builtin server over stdio (which the demo
model calls when asked to calculate) and the test toolbox over streamable HTTP (which a
scripted model calls, chosen by the message's first word).
"""

import json
import sys

import pytest
from live import ROOT, LiveSite, log_in
from scripted_upstream import by_message, calls_tools

from conversations.demo import DemoModel, ServerThread

pytestmark = pytest.mark.browser

TOOL_CALL = "[data-part=tool-call]"


@pytest.fixture(scope="module")
def tool_upstream():
    scenarios = {
        "shout-it": calls_tools([("box__shout", '{"text": "quiet please"}')]),
        "slow-tool": calls_tools([("box__hold", '{"seconds": 30}')]),
    }
    thread = ServerThread(by_message(scenarios, DemoModel(tokens_per_second=40))).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def tool_site(tmp_path_factory, tool_upstream, toolbox):
    tmp = tmp_path_factory.mktemp("tools-site")
    config = tmp / "mcp.json"
    builtin = {
        "command": sys.executable,
        "args": ["-m", "conversations.tools.builtin"],
        "env": {"PYTHONPATH": str(ROOT)},
    }
    servers = {"builtin": builtin, "box": {"url": toolbox.url}}
    config.write_text(json.dumps({"mcpServers": servers}))
    site = LiveSite(tmp, tool_upstream.base_url, CHAT_MCP_CONFIG=str(config)).start()
    yield site
    site.stop()


@pytest.fixture
def tool_page(browser, tool_site):
    context = browser.new_context(base_url=tool_site.url)
    page = context.new_page()
    page.set_default_timeout(20_000)
    log_in(page, tool_site)
    page.get_by_role("button", name="New conversation").first.click()
    page.locator("#chat[data-socket=open]").wait_for()
    yield page
    context.close()


def send(page, text):
    page.locator("textarea[name=content]").fill(text)
    page.locator("textarea[name=content]").press("Enter")


def last_reply(page):
    return page.locator("[data-role=assistant]").last


def test_the_demo_model_calls_the_builtin_calculator_and_answers_with_its_result(tool_page):
    page = tool_page
    send(page, "calculate 2**10 + 3")
    call = page.locator(f"{TOOL_CALL}[data-tool-name=calculate]")
    call.locator("[data-part=tool-result]").get_by_text("1027").wait_for()
    last_reply(page).and_(page.locator("[data-status=complete]")).wait_for()
    assert "= 1027" in last_reply(page).inner_text()
    assert call.get_attribute("data-state") == "done"
    assert "Done in" in call.locator(".tool-state").inner_text()
    call.locator(".tool-arguments summary").click()
    assert '"expression": "2**10 + 3"' in call.locator(".tool-arguments pre").inner_text()

    page.reload()
    page.locator("#chat[data-socket=open]").wait_for()
    call = page.locator(f"{TOOL_CALL}[data-tool-name=calculate]")
    assert call.get_attribute("data-state") == "done"
    assert call.locator("[data-part=tool-result]").inner_text().strip().endswith("1027")
    # The tool call sits in the turn, outside the message: the answer is the text alone.
    turn = page.locator(".turn-assistant").last
    assert turn.locator(TOOL_CALL).count() == 1
    assert last_reply(page).locator(TOOL_CALL).count() == 0


def test_a_tool_that_may_change_things_asks_and_runs_once_allowed(tool_page):
    page = tool_page
    send(page, "shout-it please")
    call = page.locator(f"{TOOL_CALL}[data-tool-name=shout][data-state=waiting]")
    call.wait_for()
    assert last_reply(page).get_attribute("data-status") == "streaming"

    page.reload()  # still waiting after a reload, with its buttons
    page.locator("#chat[data-socket=open]").wait_for()
    call = page.locator(f"{TOOL_CALL}[data-tool-name=shout]")
    call.get_by_role("button", name="Allow").click()

    call.locator("[data-part=tool-result]").get_by_text("QUIET PLEASE").wait_for()
    last_reply(page).and_(page.locator("[data-status=complete]")).wait_for()
    assert "Results: QUIET PLEASE" in last_reply(page).inner_text()
    assert call.get_by_role("button", name="Allow").count() == 0


def test_a_denied_call_is_not_run_and_the_model_is_told(tool_page):
    page = tool_page
    send(page, "shout-it again")
    call = page.locator(f"{TOOL_CALL}[data-tool-name=shout]")
    call.get_by_role("button", name="Deny").click()
    page.locator(f"{TOOL_CALL}[data-tool-name=shout][data-state=denied]").wait_for()
    last_reply(page).and_(page.locator("[data-status=complete]")).wait_for()
    assert "denied" in last_reply(page).inner_text()
    assert call.locator("[data-part=tool-result]").is_hidden()


def test_stop_during_a_slow_tool_ends_the_reply(tool_page):
    page = tool_page
    send(page, "slow-tool now")
    call = page.locator(f"{TOOL_CALL}[data-tool-name=hold]")
    call.get_by_role("button", name="Allow").click()
    page.locator(f"{TOOL_CALL}[data-tool-name=hold][data-state=running]").wait_for()

    page.get_by_role("button", name="Stop").click()
    # The tool would take 30 s: the reply ends long before.
    last_reply(page).and_(page.locator("[data-status=stopped]")).wait_for(timeout=10_000)
    assert call.get_attribute("data-state") == "stopped"
    page.reload()
    assert page.locator(f"{TOOL_CALL}[data-tool-name=hold]").get_attribute("data-state") == (
        "stopped"
    )


def test_the_tools_panel_switches_a_tool_off_for_the_conversation(tool_page):
    page = tool_page
    send(page, "hello")  # the first message stores the conversation, and its tools panel
    page.locator("[data-role=assistant]:not([data-status=streaming])").wait_for()
    page.get_by_text("Tools", exact=True).click()
    echo = page.locator("input[name=on][value=box__echo]")
    echo.wait_for()
    assert echo.is_checked()
    assert page.locator("[data-server=builtin][data-state=ready]").count() == 1
    with page.expect_response(lambda r: "/tools/" in r.url and r.request.method == "POST"):
        echo.uncheck()

    page.reload()
    page.get_by_text("Tools", exact=True).click()
    echo = page.locator("input[name=on][value=box__echo]")
    echo.wait_for()
    assert not echo.is_checked()
    assert page.locator("input[name=on][value=builtin__calculate]").is_checked()
