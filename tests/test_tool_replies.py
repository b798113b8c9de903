"""Tool rounds inside a reply: a scripted upstream calls the tools of a real MCP server.

The MCP server is tests/mcp_servers/toolbox.py over streamable HTTP (named "box" in the
site's configuration) or the site's own builtin server over stdio. The reply task runs
the calls, shows them on the page, stores them, and streams on with their results.
"""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from scripted_upstream import calls_tools, refuses_tools, requests_of, sequence, text_stream
from sockets import ends_reply, eventually, messages_of, receive_until, send

from conversations.models import Conversation, Message, ToolSetting
from conversations.runtime import runtime
from conversations.tools import ServerConfig, ToolServers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def tools_from(settings, tmp_path):
    """Point CHAT_MCP_CONFIG at an mcpServers file; close the sessions after the test."""

    def configure(servers: dict) -> None:
        path = tmp_path / "mcp.json"
        path.write_text(json.dumps({"mcpServers": servers}))
        settings.CHAT_MCP_CONFIG = str(path)

    yield configure
    await runtime.close_tool_servers()
    runtime.without_tools.clear()


@pytest.fixture
def box(toolbox, tools_from):
    """The toolbox, named "box"; of its tools not marked read-only, only `shout` asks first."""
    tools_from({"box": {"url": toolbox.url}})
    for name in ("refuse", "explode", "big", "hold", "meet"):
        ToolSetting.objects.create(server="box", tool=name, allowed_without_asking=True)
    return toolbox


async def hold_counts(toolbox) -> dict:
    """How many `hold` calls the toolbox started, saw cancelled and finished."""
    servers = ToolServers({"box": ServerConfig(name="box", url=toolbox.url)})
    try:
        tool = next(t for t in await servers.tools() if t.name == "status")
        result = await servers.call(tool, {}, timeout=5, max_chars=1000)
        return json.loads(result.text)
    finally:
        await servers.aclose()


async def reply_to(socket, content="use the tools", seconds=15.0):
    await send(socket, action="send", content=content)
    return await receive_until(socket, ends_reply, seconds=seconds)


def tool_frames(frames):
    return [f for f in frames if 'data-part="tool-call"' in f]


async def last_reply(conversation) -> Message:
    return (await messages_of(conversation))[-1]


# --- the round trip ---------------------------------------------------------------------


async def test_a_tool_call_runs_and_the_reply_continues_with_its_result(
    box, start_upstream, conversation, user, connect
):
    server = await start_upstream(calls_tools([("box__echo", '{"text": "hello from the box"}')]))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    reply = await last_reply(conversation)
    assert reply.status == Message.Status.COMPLETE
    assert reply.content == "Let me look. \n\nResults: hello from the box"
    [round_] = reply.tool_rounds
    [call] = round_["calls"]
    assert (call["name"], call["tool"], call["server"]) == ("box__echo", "echo", "box")
    assert (call["state"], call["result"]) == ("done", "hello from the box")
    assert call["seconds"] >= 0
    # Offered, then continued with the assistant's calls and the tool's answer.
    first, second = requests_of(server)
    names = [t["function"]["name"] for t in first["tools"]]
    assert "box__echo" in names and first["tool_choice"] == "auto"
    assert second["messages"][-2] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "box__echo", "arguments": '{"text": "hello from the box"}'},
            }
        ],
    }
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "content": "hello from the box",
    }
    # Usage adds up over both requests.
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (20, 4, 24)
    # Shown live: asked for and running, then answered, then in the final element.
    shown = tool_frames(frames)
    assert any('data-state="running"' in f for f in shown)
    assert any('data-state="done"' in f and "hello from the box" in f for f in shown)
    assert 'data-tool-name="echo"' in frames[-1] and 'data-part="tool-result"' in frames[-1]
    await socket.disconnect()


async def test_the_next_prompt_carries_the_tool_rounds(
    box, start_upstream, conversation, user, connect
):
    server = await start_upstream(calls_tools([("box__echo", '{"text": "kept"}')]))
    socket = await connect(conversation, user)
    await reply_to(socket)
    await reply_to(socket, content="and now?")

    third = requests_of(server)[2]
    roles = [m["role"] for m in third["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    history = third["messages"]
    assert history[0] == {"role": "user", "content": "use the tools"}
    assert history[1]["tool_calls"][0]["function"]["name"] == "box__echo"
    assert history[2] == {"role": "tool", "tool_call_id": "call_0_0", "content": "kept"}
    assert history[3] == {"role": "assistant", "content": "Results: kept"}
    assert history[4] == {"role": "user", "content": "and now?"}
    await socket.disconnect()


async def test_parallel_calls_run_at_the_same_time(
    box, start_upstream, conversation, user, connect
):
    meet = '{"group": "pair", "size": 2}'
    await start_upstream(calls_tools([("box__meet", meet), ("box__meet", meet)]))
    socket = await connect(conversation, user)
    await reply_to(socket)

    reply = await last_reply(conversation)
    states = [(c["state"], c["result"]) for c in reply.tool_rounds[0]["calls"]]
    assert states == [("done", "met 2"), ("done", "met 2")]
    assert reply.content.endswith("Results: met 2 | met 2")
    await socket.disconnect()


async def test_several_rounds_then_the_last_request_offers_no_more(
    box, start_upstream, conversation, user, connect, settings
):
    settings.CHAT_TOOL_MAX_ROUNDS = 2
    rounds = [[("box__echo", json.dumps({"text": f"round {n}"}))] for n in range(5)]
    server = await start_upstream(calls_tools(*rounds))
    socket = await connect(conversation, user)
    await reply_to(socket)

    requests = requests_of(server)
    assert len(requests) == 3
    assert [r["tool_choice"] for r in requests] == ["auto", "auto", "none"]
    reply = await last_reply(conversation)
    assert [r["calls"][0]["result"] for r in reply.tool_rounds] == ["round 0", "round 1"]
    # The scripted model asks again on the last request: those calls are kept, not run.
    assert reply.tool_calls[0]["function"]["name"] == "box__echo"
    assert len(reply.tool_rounds) == 2
    await socket.disconnect()


# --- failures go back to the model ---------------------------------------------------------


async def test_a_failing_tool_and_bad_calls_come_back_to_the_model_as_errors(
    box, start_upstream, conversation, user, connect
):
    calls = [
        ("box__refuse", '{"reason": "not today"}'),
        ("box__explode", "{}"),
        ("box__nothing_like_it", "{}"),
        ("box__echo", '{"text": '),
    ]
    server = await start_upstream(calls_tools(calls))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    reply = await last_reply(conversation)
    assert reply.status == Message.Status.COMPLETE
    states = [c["state"] for c in reply.tool_rounds[0]["calls"]]
    assert states == ["error"] * 4
    tool_messages = [m["content"] for m in requests_of(server)[1]["messages"][-4:]]
    assert tool_messages[0].startswith("Error: ") and "refused: not today" in tool_messages[0]
    assert tool_messages[1].startswith("Error: ")
    assert "the secret internals" not in json.dumps(requests_of(server)[1])
    assert "no tool named 'box__nothing_like_it'" in tool_messages[2]
    assert "not valid JSON" in tool_messages[3]
    assert 'data-state="error"' in frames[-1]
    await socket.disconnect()


async def test_a_tool_that_takes_too_long_is_abandoned(
    box, start_upstream, conversation, user, connect, settings
):
    settings.CHAT_TOOL_TIMEOUT = 0.5
    server = await start_upstream(calls_tools([("box__hold", '{"seconds": 5}')]))
    socket = await connect(conversation, user)
    started = asyncio.get_running_loop().time()
    await reply_to(socket)

    assert asyncio.get_running_loop().time() - started < 4
    [call] = (await last_reply(conversation)).tool_rounds[0]["calls"]
    assert call["state"] == "error" and "did not finish within 0.5 seconds" in call["result"]
    assert "did not finish" in requests_of(server)[1]["messages"][-1]["content"]
    await socket.disconnect()


async def test_a_server_that_is_down_leaves_chatting_working_and_says_why(
    tools_from, start_upstream, conversation, user, connect, settings
):
    settings.CHAT_TOOL_CONNECT_TIMEOUT = 2.0
    tools_from({"gone": {"url": "http://127.0.0.1:9/mcp"}})
    server = await start_upstream(text_stream(["Fine without tools."]))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    assert "tools" not in requests_of(server)[0]
    assert any("Tools of “gone” are unavailable" in f for f in frames)
    reply = await last_reply(conversation)
    assert (reply.status, reply.content) == (Message.Status.COMPLETE, "Fine without tools.")
    await socket.disconnect()


async def test_an_upstream_that_refuses_tools_is_asked_again_without_and_remembered(
    box, start_upstream, conversation, user, connect
):
    server = await start_upstream(refuses_tools(text_stream(["No tools here."])))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    await reply_to(socket, content="again")

    first, second, third = requests_of(server)
    assert "tools" in first and "tools" not in second and "tools" not in third
    assert any("does not take tools" in f for f in frames)
    assert (await last_reply(conversation)).content == "No tools here."
    await socket.disconnect()


# --- stop, reload, run once ----------------------------------------------------------------


async def test_stop_during_a_slow_tool_cancels_it_and_ends_the_reply(
    box, start_upstream, conversation, user, connect
):
    before = await hold_counts(box)
    server = await start_upstream(calls_tools([("box__hold", '{"seconds": 30}')]))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hold on")
    await receive_until(socket, lambda f: 'data-state="running"' in f)
    stopped_at = asyncio.get_running_loop().time()
    await send(socket, action="stop")
    frames = await receive_until(socket, ends_reply)

    assert asyncio.get_running_loop().time() - stopped_at < 3
    assert 'data-status="stopped"' in frames[-1]
    reply = await last_reply(conversation)
    assert reply.status == Message.Status.STOPPED
    assert reply.tool_rounds[0]["calls"][0]["state"] == "stopped"
    assert len(requests_of(server)) == 1  # no request after the stop

    async def cancelled():
        counts = await hold_counts(box)
        return counts["cancelled"] == before["cancelled"] + 1

    await eventually(cancelled, seconds=5)
    assert (await hold_counts(box))["finished"] == before["finished"]
    await socket.disconnect()


async def test_a_reload_mid_tool_shows_the_running_call_and_the_tool_runs_once(
    box, start_upstream, conversation, user, connect
):
    before = await hold_counts(box)
    server = await start_upstream(calls_tools([("box__hold", '{"seconds": 1.5}')]))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hold on")
    await receive_until(socket, lambda f: 'data-state="running"' in f)
    await socket.disconnect()

    # The stored row already shows the call running: a page loaded now shows it too.
    reply = await last_reply(conversation)
    assert reply.status == Message.Status.STREAMING
    assert reply.tool_rounds[0]["calls"][0]["state"] == "running"
    # A second tab joins mid-tool and gets a snapshot with the call.
    other = await connect(conversation, user)
    await send(other, action="sync", since=reply.pk - 1, shown=[])
    frames = await receive_until(other, lambda f: 'data-part="tool-call"' in f)
    assert 'data-state="running"' in frames[-1]
    frames = await receive_until(other, ends_reply, seconds=10)

    reply = await last_reply(conversation)
    assert reply.status == Message.Status.COMPLETE
    assert reply.content.endswith("Results: held 1.5")
    after = await hold_counts(box)
    assert after["started"] == before["started"] + 1
    assert len(requests_of(server)) == 2
    await other.disconnect()


# --- confirmation --------------------------------------------------------------------------


async def waiting_call(socket) -> str:
    frames = await receive_until(socket, lambda f: 'data-state="waiting"' in f)
    assert "Allow" in frames[-1] and "Deny" in frames[-1]
    return frames[-1]


async def test_a_tool_that_may_change_things_asks_first_and_a_denial_goes_to_the_model(
    box, start_upstream, conversation, user, connect
):
    server = await start_upstream(calls_tools([("box__shout", '{"text": "quiet"}')]))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="shout it")
    await waiting_call(socket)
    reply = await last_reply(conversation)
    assert reply.tool_rounds[0]["calls"][0]["state"] == "waiting"

    await send(socket, action="decide", message_id=reply.pk, call_id="call_0_0", allow="no")
    frames = await receive_until(socket, ends_reply)

    reply = await last_reply(conversation)
    [call] = reply.tool_rounds[0]["calls"]
    assert (call["state"], call["result"]) == ("denied", "")
    assert "denied" in requests_of(server)[1]["messages"][-1]["content"]
    assert 'data-state="denied"' in frames[-1] and "Allow" not in frames[-1]
    await socket.disconnect()


async def test_an_allowed_call_runs_and_a_second_answer_changes_nothing(
    box, start_upstream, conversation, user, connect
):
    await start_upstream(calls_tools([("box__shout", '{"text": "loud"}')]))
    socket = await connect(conversation, user)
    other = await connect(conversation, user)
    await send(socket, action="send", content="shout it")
    await waiting_call(socket)
    reply = await last_reply(conversation)

    await send(socket, action="decide", message_id=reply.pk, call_id="call_0_0", allow="yes")
    await send(other, action="decide", message_id=reply.pk, call_id="call_0_0", allow="no")
    await receive_until(socket, ends_reply)

    [call] = (await last_reply(conversation)).tool_rounds[0]["calls"]
    assert (call["state"], call["result"]) == ("done", "LOUD")
    await socket.disconnect()
    await other.disconnect()


async def test_a_call_left_waiting_is_denied_after_the_confirmation_timeout(
    box, start_upstream, conversation, user, connect, settings
):
    settings.CHAT_TOOL_CONFIRM_TIMEOUT = 0.3
    await start_upstream(calls_tools([("box__shout", '{"text": "nobody"}')]))
    socket = await connect(conversation, user)
    await reply_to(socket)
    [call] = (await last_reply(conversation)).tool_rounds[0]["calls"]
    assert call["state"] == "denied"
    await socket.disconnect()


async def test_decisions_that_cannot_be_read_or_come_late_get_a_notice(
    box, start_upstream, conversation, user, connect
):
    await start_upstream(text_stream(["done"]))
    socket = await connect(conversation, user)
    await reply_to(socket)
    reply = await last_reply(conversation)
    for frame in (
        {"action": "decide", "message_id": reply.pk, "call_id": "x", "allow": "maybe"},
        {"action": "decide", "message_id": reply.pk, "call_id": ["x"], "allow": "yes"},
        {"action": "decide", "message_id": "nope", "call_id": "x", "allow": "yes"},
    ):
        await send(socket, **frame)
        [notice] = await receive_until(socket, lambda f: "notice" in f)
        assert "could not be read" in notice
    await send(socket, action="decide", message_id=reply.pk, call_id="x", allow="yes")
    [notice] = await receive_until(socket, lambda f: "notice" in f)
    assert "no longer waits" in notice
    await socket.disconnect()


# --- what administrators and owners switch ----------------------------------------------


@database_sync_to_async
def set_tool(server, tool, **fields):
    ToolSetting.objects.update_or_create(server=server, tool=tool, defaults=fields)


async def test_tools_switched_off_are_not_offered_and_allowed_ones_do_not_ask(
    box, start_upstream, conversation, user, connect
):
    await set_tool("box", "echo", enabled=False)
    await set_tool("box", "shout", allowed_without_asking=True)
    await database_sync_to_async(Conversation.objects.filter(pk=conversation.pk).update)(
        disabled_tools=["box__hold"]
    )
    server = await start_upstream(calls_tools([("box__shout", '{"text": "go"}')]))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    names = {t["function"]["name"] for t in requests_of(server)[0]["tools"]}
    assert "box__shout" in names and "box__refuse" in names
    assert "box__echo" not in names and "box__hold" not in names
    assert not any('data-state="waiting"' in f for f in frames)
    [call] = (await last_reply(conversation)).tool_rounds[0]["calls"]
    assert (call["state"], call["result"]) == ("done", "GO")
    await socket.disconnect()


# --- untrusted output ----------------------------------------------------------------------


async def test_a_hostile_tool_result_is_shown_as_text(
    box, start_upstream, conversation, user, connect
):
    hostile = (
        '<img src="https://evil.example/x.png" onerror="alert(1)"> **bold** <script>x</script>'
    )
    await start_upstream(calls_tools([("box__echo", json.dumps({"text": hostile}))]))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    final = frames[-1]
    tools_part = final[final.index('data-part="tool-call"') : final.index('class="message"')]
    assert "&lt;img src=&quot;https://evil.example/x.png&quot;" in tools_part
    assert "<img" not in tools_part and "<script" not in tools_part
    # The model repeated it in its answer: that goes through the sanitizer, as text.
    assert "<img" not in final and "<script" not in final
    await socket.disconnect()


# --- zero configuration: the site's own server over stdio ------------------------------


async def test_the_builtin_server_runs_over_stdio_with_no_configuration(
    settings, start_upstream, conversation, user, connect
):
    settings.CHAT_MCP_CONFIG = ""
    try:
        server = await start_upstream(
            calls_tools([("builtin__calculate", '{"expression": "2**10 + sqrt(16)"}')])
        )
        socket = await connect(conversation, user)
        await reply_to(socket, seconds=30)
    finally:
        await runtime.close_tool_servers()

    reply = await last_reply(conversation)
    assert reply.content.endswith("Results: 1028.0")
    names = {t["function"]["name"] for t in requests_of(server)[0]["tools"]}
    assert {"builtin__calculate", "builtin__current_time"} <= names
    await socket.disconnect()


async def test_tools_off_sends_no_tools(start_upstream, conversation, user, connect):
    server = await start_upstream(sequence(text_stream(["plain"])))
    socket = await connect(conversation, user)
    await reply_to(socket)
    assert "tools" not in requests_of(server)[0]
    await socket.disconnect()


# --- the conversation's Tools panel --------------------------------------------------------


@pytest.fixture
async def owner_client(async_client, user):
    await async_client.aforce_login(user)
    return async_client


def panel_url(conversation):
    return f"/c/{conversation.pk}/tools/"


async def test_the_tools_panel_lists_the_tools_and_switches_them_per_conversation(
    box, owner_client, start_upstream, conversation, user, connect
):
    await set_tool("box", "explode", enabled=False)  # off for everyone: not listed
    response = await owner_client.get(panel_url(conversation))
    assert response.status_code == 200 and "private" in response["Cache-Control"]
    html = response.content.decode()
    assert 'value="box__echo" checked' in html and "Say the text back." in html
    assert "box__explode" not in html
    assert 'value="box__shout" checked' in html and "asks before it runs" in html

    listed = ["box__echo", "box__shout", "box__hold"]
    response = await owner_client.post(
        panel_url(conversation), {"listed": listed, "on": ["box__shout"]}
    )
    html = response.content.decode()
    assert 'value="box__echo">' in html and 'value="box__shout" checked' in html
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.disabled_tools == ["box__echo", "box__hold"]

    server = await start_upstream(text_stream(["ok"]))
    socket = await connect(conversation, user)
    await reply_to(socket)
    names = {t["function"]["name"] for t in requests_of(server)[0]["tools"]}
    assert "box__shout" in names and "box__echo" not in names and "box__hold" not in names
    await socket.disconnect()


async def test_the_tools_panel_says_why_a_server_is_unavailable(
    tools_from, owner_client, conversation, settings
):
    settings.CHAT_TOOL_CONNECT_TIMEOUT = 2.0
    tools_from({"gone": {"url": "http://127.0.0.1:9/mcp"}})
    html = (await owner_client.get(panel_url(conversation))).content.decode()
    assert 'data-server="gone" data-state="failed"' in html and "Unavailable:" in html


async def test_the_tools_panel_with_tools_off_or_a_bad_configuration(
    owner_client, conversation, settings, tmp_path
):
    html = (await owner_client.get(panel_url(conversation))).content.decode()
    assert "This site offers no tools." in html
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    settings.CHAT_MCP_CONFIG = str(broken)
    html = (await owner_client.get(panel_url(conversation))).content.decode()
    assert "The tool configuration cannot be used" in html and "broken.json" in html


async def test_nobody_sees_or_switches_the_tools_of_another_persons_conversation(
    box, async_client, other_user, conversation
):
    await async_client.aforce_login(other_user)
    assert (await async_client.get(panel_url(conversation))).status_code == 404
    response = await async_client.post(panel_url(conversation), {"listed": ["box__echo"]})
    assert response.status_code == 404
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.disabled_tools == []


async def test_tool_rounds_count_against_the_per_minute_limit_and_continue_carries_them_on(
    box, start_upstream, conversation, user, connect, settings
):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    rounds = [[("box__echo", json.dumps({"text": f"round {n}"}))] for n in range(3)]
    server = await start_upstream(calls_tools(*rounds))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    # The send and the first round's request count; the second round's is refused.
    assert len(requests_of(server)) == 2
    assert 'data-status="interrupted"' in frames[-1]
    assert "reached 2 requests to the model a minute" in frames[-1]
    reply = await last_reply(conversation)
    assert [r["calls"][0]["result"] for r in reply.tool_rounds] == ["round 0", "round 1"]
    assert reply.can_continue

    settings.CHAT_MESSAGES_PER_MINUTE = 20
    await send(socket, action="continue", message_id=reply.pk)
    await receive_until(socket, ends_reply, seconds=15)
    carried = requests_of(server)[2]["messages"]
    assert [m["content"] for m in carried if m["role"] == "tool"][:2] == ["round 0", "round 1"]
    await socket.disconnect()


def test_a_reply_ended_by_a_crash_shows_no_call_still_running_or_waiting(conversation):
    from conversations.rendering import message_html

    calls = [
        {"id": "a", "name": "box__hold", "arguments": "{}", "state": "running", "result": ""},
        {"id": "b", "name": "box__shout", "arguments": "{}", "state": "waiting", "result": ""},
    ]
    reply = Message.objects.create(
        conversation=conversation,
        role="assistant",
        status=Message.Status.STREAMING,
        tool_rounds=[{"text_end": 0, "calls": calls}],
    )
    html = message_html(reply)
    assert 'data-state="running"' in html and "Allow" in html
    # What a process that stopped mid-tool leaves: the row ended by the orphan sweep.
    Message.objects.filter(pk=reply.pk).interrupt("The server stopped.")
    html = message_html(Message.objects.get(pk=reply.pk))
    assert 'data-state="interrupted"' in html and 'data-state="not_run"' in html
    assert "Running" not in html and "Allow" not in html
