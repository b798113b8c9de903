"""The MCP tool layer (conversations/tools) against real MCP servers built with the SDK.

The test server (tests/mcp_servers/toolbox.py) is served over streamable HTTP by uvicorn on
a loopback port in a background thread, and run as a subprocess over stdio. Both speak the
2026-07-28 protocol, or, as "legacy", only the older `initialize` handshake.
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import mcp.types as mcp_types
import pytest
from mcp_servers.serving import HttpServer
from mcp_servers.toolbox import build

from conversations.tools import (
    ConfigError,
    ServerConfig,
    Tool,
    ToolServers,
    builtin_config,
    load_config,
)
from conversations.tools.arithmetic import CalculationError, calculate
from conversations.tools.results import from_call_result

TOOLBOX = Path(__file__).parent / "mcp_servers" / "toolbox.py"
QUICK = {"timeout": 5.0, "max_chars": 10_000}


@pytest.fixture(params=["modern", "legacy"])
def era(request):
    return request.param


@pytest.fixture
def http_server(era):
    """The toolbox over streamable HTTP, in the era under test."""
    server = HttpServer(lambda: build(legacy=era == "legacy").streamable_http_app())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def modern_http_server():
    """The toolbox over streamable HTTP, shared by the tests that leave it as it was."""
    server = HttpServer(lambda: build().streamable_http_app())
    server.start()
    yield server
    server.stop()


def stdio_config(name: str = "box", *, legacy: bool = False) -> ServerConfig:
    args = (str(TOOLBOX), "--legacy") if legacy else (str(TOOLBOX),)
    return ServerConfig(name=name, command=sys.executable, args=args)


@pytest.fixture
async def open_servers():
    """Makes ToolServers instances and closes them after the test."""
    made: list[ToolServers] = []

    def make(configs: dict[str, ServerConfig], **options) -> ToolServers:
        servers = ToolServers(configs, **options)
        made.append(servers)
        return servers

    yield make
    for servers in made:
        await servers.aclose()


@pytest.fixture
async def box(modern_http_server, open_servers):
    """ToolServers with one ready server, the toolbox over HTTP, named "box"."""
    servers = open_servers({"box": ServerConfig(name="box", url=modern_http_server.url)})
    assert await servers.tools()
    return servers


def tool_of(servers: ToolServers, name: str, server: str = "box") -> Tool:
    tool = servers.find(f"{server}__{name}")
    assert tool is not None, f"{server}__{name} is not listed"
    return tool


async def eventually(check, *, within: float = 5.0):
    """Wait for an async condition that depends on a message in flight."""
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)
    return result


# Configuration


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_config_reads_http_and_stdio_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_TOKEN", "s3cret-token")
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "search": {
                    "type": "http",
                    "url": "https://example.com/mcp",
                    "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"},
                },
                "other": {"type": "streamable-http", "url": "http://127.0.0.1:9000/mcp"},
                "files": {
                    "command": "npx",
                    "args": ["-y", "files-server", "${ROOT:-/srv}"],
                    "env": {"LEVEL": "debug"},
                    "autoApprove": [],
                },
                "bare": {"type": "stdio", "command": "server"},
                "off": {"command": "never", "disabled": True},
            }
        },
    )
    configs = load_config(path)
    assert set(configs) == {"search", "other", "files", "bare"}
    search = configs["search"]
    assert search.transport == "http"
    assert search.headers == {"Authorization": "Bearer s3cret-token"}
    assert "s3cret" not in repr(search)
    files = configs["files"]
    assert files.transport == "stdio"
    assert (files.command, files.args, files.env) == (
        "npx",
        ("-y", "files-server", "/srv"),
        {"LEVEL": "debug"},
    )
    assert configs["bare"] == ServerConfig(name="bare", command="server")


def test_load_config_reads_vs_code_servers_key(tmp_path):
    configs = load_config(
        write(tmp_path, {"servers": {"a": {"type": "http", "url": "http://x/mcp"}}})
    )
    assert configs["a"].url == "http://x/mcp"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON (line 1, column 2)"),
        ('{"mcpServers": {"a": {"command": "x"}, "a": {"command": "y"}}}', "'a' appears twice"),
        ([], 'expected a JSON object with an "mcpServers" object'),
        ({"servers_typo": {}}, 'no "mcpServers" object'),
        ({"mcpServers": []}, "mcpServers: expected an object of servers, got a list"),
        ({"mcpServers": {"a": "x"}}, "mcpServers.a: expected an object, got a string"),
        ({"mcpServers": {"": {"command": "x"}}}, "a server has an empty name"),
        ({"mcpServers": {"a": {}}}, 'mcpServers.a: a server needs "url" (streamable HTTP) or'),
        ({"mcpServers": {"a": {"url": "http://x", "command": "y"}}}, 'either "url" or "command"'),
        ({"mcpServers": {"a": {"type": "sse", "url": "http://x/sse"}}}, "SSE transport is not"),
        ({"mcpServers": {"a": {"type": "ws", "url": "ws://x"}}}, "a.type: unknown transport 'ws'"),
        ({"mcpServers": {"a": {"type": 3, "url": "http://x"}}}, "a.type: expected a string"),
        ({"mcpServers": {"a": {"type": "stdio", "url": "http://x"}}}, 'needs "command"'),
        ({"mcpServers": {"a": {"type": "http", "command": "x"}}}, 'needs "url"'),
        ({"mcpServers": {"a": {"url": "ftp://x"}}}, "a.url: expected an http:// or https:// URL"),
        ({"mcpServers": {"a": {"url": 5}}}, "a.url: expected a string, got a number"),
        (
            {"mcpServers": {"a": {"url": "http://x", "headers": []}}},
            "a.headers: expected an object",
        ),
        (
            {"mcpServers": {"a": {"url": "http://x", "headers": {"K": 1}}}},
            "a.headers.K: expected a",
        ),
        ({"mcpServers": {"a": {"command": ""}}}, "a.command: must not be empty"),
        ({"mcpServers": {"a": {"command": "x", "args": "-v"}}}, "a.args: expected a list"),
        (
            {"mcpServers": {"a": {"command": "x", "args": ["-v", 2]}}},
            "a.args[1]: expected a string",
        ),
        ({"mcpServers": {"a": {"command": "x", "env": {"K": True}}}}, "a.env.K: expected a string"),
        (
            {"mcpServers": {"a": {"command": "x", "args": ["${NO_SUCH_VARIABLE_HERE}"]}}},
            "a.args[0]: the environment variable NO_SUCH_VARIABLE_HERE is not set",
        ),
    ],
)
def test_load_config_refuses_malformed_files_clearly(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)


def test_load_config_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_builtin_config_runs_the_builtin_server_over_stdio():
    config = builtin_config()["builtin"]
    assert config.transport == "stdio"
    assert (config.command, config.args) == (sys.executable, ("-m", "conversations.tools.builtin"))


# Tools as the model sees them


def test_function_names_are_safe_short_and_stable():
    tool = Tool("my server", "files.read/all", "", {}, read_only=True)
    assert tool.function_name == "my_server__files_read_all"
    long = Tool("s", "n" * 100, "", {}, read_only=False)
    assert len(long.function_name) == 64
    assert long.function_name == Tool("s", "n" * 100, "", {}, read_only=False).function_name
    assert long.function_name != Tool("s", "n" * 99 + "m", "", {}, read_only=False).function_name


def test_as_openai_offers_a_function_with_parameters():
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    assert Tool("s", "t", "Find", schema, read_only=True).as_openai() == {
        "type": "function",
        "function": {"name": "s__t", "description": "Find", "parameters": schema},
    }
    empty = Tool("s", "t", "", {}, read_only=True).as_openai()["function"]["parameters"]
    assert empty == {"type": "object", "properties": {}}


def test_results_describe_media_and_resources_without_fetching():
    result = mcp_types.CallToolResult(
        content=[
            mcp_types.TextContent(text="Here:"),
            mcp_types.ImageContent(data="aGVsbG8=", mime_type="image/png"),
            mcp_types.AudioContent(data="aGk=", mime_type="audio/wav"),
            mcp_types.ResourceLink(name="report", uri="https://example.com/r.pdf"),
            mcp_types.EmbeddedResource(
                resource=mcp_types.TextResourceContents(uri="file:///a.txt", text="inline text")
            ),
        ]
    )
    text = from_call_result(result, max_chars=1000).text
    assert text.splitlines() == [
        "Here:",
        "[image: image/png, 5 bytes, not shown]",
        "[audio: audio/wav, 2 bytes, not shown]",
        "[resource link: report <https://example.com/r.pdf>, not fetched]",
        "[resource <file:///a.txt>]",
        "inline text",
    ]


def test_results_fall_back_to_structured_content():
    result = mcp_types.CallToolResult(content=[], structured_content={"temperature": 21})
    assert from_call_result(result, max_chars=1000).text == '{"temperature": 21}'
    empty = from_call_result(mcp_types.CallToolResult(content=[]), max_chars=1000)
    assert (empty.text, empty.is_error) == ("(no output)", False)


# Listing


async def test_tools_are_listed_over_http_with_read_only_annotations(http_server, open_servers):
    servers = open_servers({"box": ServerConfig(name="box", url=http_server.url)})
    tools = {tool.function_name: tool for tool in await servers.tools()}
    assert tools["box__echo"].read_only is True
    assert tools["box__shout"].read_only is False
    assert tools["box__big"].read_only is False
    assert tools["box__echo"].description == "Say the text back."
    assert tools["box__echo"].input_schema["properties"]["text"]["type"] == "string"
    [state] = servers.states()
    assert (state.name, state.transport, state.state, state.error) == ("box", "http", "ready", "")
    assert {tool.name for tool in state.tools} >= {"echo", "shout", "meet"}


async def test_tools_are_listed_over_stdio(era, open_servers):
    servers = open_servers({"box": stdio_config(legacy=era == "legacy")})
    assert servers.states()[0].state == "idle"
    tools = {tool.name: tool for tool in await servers.tools()}
    assert tools["echo"].read_only and not tools["shout"].read_only
    assert servers.states()[0].transport == "stdio"


async def test_sessions_are_opened_once_and_reused(box):
    first = tool_of(box, "pid")
    await box.tools()
    await box.call(first, {}, **QUICK)
    assert box.find("box__pid") == first
    assert box._servers["box"]._generation == 1  # one session, opened once
    assert len({first, tool_of(box, "pid")}) == 1  # tools can be kept in sets
    assert box.find("box__no_such_tool") is None


# Calls


async def test_a_call_returns_the_tools_text(box):
    result = await box.call(tool_of(box, "echo"), {"text": "hello"}, **QUICK)
    assert (result.text, result.is_error, result.truncated) == ("hello", False, False)


async def test_a_call_over_stdio_returns_the_tools_text(open_servers):
    servers = open_servers({"box": stdio_config()})
    await servers.tools()
    result = await servers.call(tool_of(servers, "shout"), {"text": "hello"}, **QUICK)
    assert (result.text, result.is_error) == ("HELLO", False)


async def test_an_error_result_comes_back_as_an_error(box):
    result = await box.call(tool_of(box, "refuse"), {"reason": "no key"}, **QUICK)
    assert result.is_error
    assert "refused: no key" in result.text


async def test_an_exception_in_a_tool_comes_back_as_an_error(box):
    result = await box.call(tool_of(box, "explode"), {}, **QUICK)
    assert result.is_error
    assert "explode" in result.text
    assert "secret internals" not in result.text  # the SDK keeps a crash's details private


async def test_bad_arguments_come_back_as_an_error(box):
    result = await box.call(tool_of(box, "big"), {"size": "many"}, **QUICK)
    assert result.is_error
    assert "size" in result.text


async def test_an_image_is_described_not_sent(box):
    result = await box.call(tool_of(box, "picture"), {}, **QUICK)
    assert result.text.splitlines()[0] == "a pixel"
    assert result.text.splitlines()[1].startswith("[image: image/png, ")


async def test_a_slow_call_times_out(box):
    started = time.monotonic()
    result = await box.call(tool_of(box, "hold"), {"seconds": 5}, timeout=0.5, max_chars=1000)
    assert time.monotonic() - started < 2
    assert result.is_error
    assert "did not finish within 0.5 seconds" in result.text
    after = await box.call(tool_of(box, "echo"), {"text": "still here"}, **QUICK)
    assert after.text == "still here"


async def test_long_output_is_truncated_and_marked(box):
    result = await box.call(tool_of(box, "big"), {"size": 5000}, timeout=5, max_chars=100)
    assert result.truncated and not result.is_error
    assert result.text == "x" * 100 + "\n[output truncated: 100 of 5000 characters]"


async def test_calls_to_one_server_run_concurrently(box):
    # Each `meet` call answers only once both are running on the server at the same time.
    meet = tool_of(box, "meet")
    first, second = await asyncio.gather(
        box.call(meet, {"group": "pair"}, **QUICK), box.call(meet, {"group": "pair"}, **QUICK)
    )
    assert (first.text, second.text) == ("met 2", "met 2")


async def test_calls_over_stdio_run_concurrently(open_servers):
    servers = open_servers({"box": stdio_config()})
    await servers.tools()
    meet = tool_of(servers, "meet")
    results = await asyncio.gather(
        *(servers.call(meet, {"group": "trio", "size": 3}, **QUICK) for _ in range(3))
    )
    assert [result.text for result in results] == ["met 3"] * 3


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_cancelling_a_call_leaves_the_session_working(
    transport, modern_http_server, open_servers
):
    config = (
        ServerConfig(name="box", url=modern_http_server.url)
        if transport == "http"
        else stdio_config()
    )
    servers = open_servers({"box": config})
    await servers.tools()

    async def status() -> dict:
        return json.loads((await servers.call(tool_of(servers, "status"), {}, **QUICK)).text)

    before = await status()

    async def changed(key: str) -> dict | None:
        counts = await status()
        return counts if counts[key] == before[key] + 1 else None

    call = asyncio.create_task(servers.call(tool_of(servers, "hold"), {"seconds": 30}, **QUICK))
    await eventually(lambda: changed("started"))
    started = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - started < 1
    after = await servers.call(tool_of(servers, "echo"), {"text": "next"}, **QUICK)
    assert (after.text, after.is_error) == ("next", False)
    assert servers.states()[0].state == "ready"
    # The server was told to stop working on it.
    counts = await eventually(lambda: changed("cancelled"))
    assert counts["finished"] == before["finished"]


# Servers that are down


async def test_unreachable_servers_offer_no_tools_and_say_why(modern_http_server, open_servers):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    servers = open_servers(
        {
            "box": ServerConfig(name="box", url=modern_http_server.url),
            "refused": ServerConfig(
                name="refused",
                url=f"http://127.0.0.1:{closed_port}/mcp?key=query-secret",
                headers={"Authorization": "Bearer header-secret-value"},
            ),
            "missing": ServerConfig(name="missing", command="/no/such/mcp-server"),
        }
    )
    tools = await servers.tools()
    assert {tool.server for tool in tools} == {"box"}
    states = {state.name: state for state in servers.states()}
    assert states["box"].state == "ready"
    assert states["refused"].state == "failed"
    assert states["refused"].error == f"cannot connect to http://127.0.0.1:{closed_port}/mcp"
    assert states["refused"].tools == ()
    assert states["missing"].state == "failed"
    assert states["missing"].error == "the command '/no/such/mcp-server' was not found"
    for state in states.values():
        assert "secret" not in state.error

    # Chatting goes on: the reachable server still answers, the others give an error result.
    assert (await servers.call(tool_of(servers, "echo"), {"text": "ok"}, **QUICK)).text == "ok"
    ghost = Tool("missing", "anything", "", {}, read_only=True)
    result = await servers.call(ghost, {}, **QUICK)
    assert result.is_error
    assert (
        "'missing' is not available: the command '/no/such/mcp-server' was not found" in result.text
    )


async def test_a_failed_server_is_not_retried_at_once(open_servers):
    missing = ServerConfig(name="missing", command="/no/such/x")
    servers = open_servers({"missing": missing}, retry_interval=0.3)
    await servers.tools()
    error = servers.states()[0].error
    assert servers.states()[0].state == "failed"
    generation = servers._servers["missing"]._generation
    await servers.tools()
    assert servers._servers["missing"]._generation == generation  # backing off
    await asyncio.sleep(0.35)
    await servers.tools()
    assert servers._servers["missing"]._generation == generation + 1
    assert servers.states()[0].error == error


async def test_a_server_that_never_answers_times_out(open_servers):
    silent = ServerConfig(
        name="silent", command=sys.executable, args=("-c", "import sys; sys.stdin.read()")
    )
    servers = open_servers({"silent": silent}, connect_timeout=0.5)
    started = time.monotonic()
    assert await servers.tools() == []
    assert time.monotonic() - started < 2
    [state] = servers.states()
    assert (state.state, state.error) == ("failed", "it did not answer within 0.5 seconds")


async def test_closing_gives_up_on_a_server_still_connecting(open_servers):
    silent = ServerConfig(
        name="silent", command=sys.executable, args=("-c", "import sys; sys.stdin.read()")
    )
    servers = open_servers({"silent": silent}, connect_timeout=30)
    listing = asyncio.create_task(servers.tools())
    await asyncio.sleep(0.2)
    assert servers.states()[0].state == "connecting"
    started = time.monotonic()
    await servers.aclose()
    assert time.monotonic() - started < 2
    assert await listing == []


async def test_an_http_error_status_is_named(open_servers):
    async def unauthorized(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    server = HttpServer(lambda: unauthorized)
    server.start()
    try:
        servers = open_servers(
            {
                "locked": ServerConfig(
                    name="locked",
                    url=server.url,
                    headers={"Authorization": "Bearer wrong-token-123"},
                )
            }
        )
        assert await servers.tools() == []
        [state] = servers.states()
        assert (state.state, state.error) == ("failed", "the server answered HTTP 401")
    finally:
        server.stop()


async def test_the_session_reopens_after_the_http_server_restarts(http_server, open_servers):
    servers = open_servers(
        {"box": ServerConfig(name="box", url=http_server.url)}, retry_interval=0.1
    )
    await servers.tools()
    echo = tool_of(servers, "echo")
    assert (await servers.call(echo, {"text": "before"}, **QUICK)).text == "before"

    http_server.stop()
    down = await servers.call(echo, {"text": "while down"}, **QUICK)
    assert down.is_error
    assert "box" in down.text
    assert servers.states()[0].state == "failed"

    http_server.start()
    await asyncio.sleep(0.15)  # past the retry interval of a failed reconnect
    after = await servers.call(echo, {"text": "after"}, **QUICK)
    assert (after.text, after.is_error) == ("after", False)
    assert servers.states()[0].state == "ready"


async def test_a_stdio_server_that_dies_is_restarted_for_the_next_call(open_servers):
    servers = open_servers({"box": stdio_config(legacy=True)})
    await servers.tools()
    pid = int((await servers.call(tool_of(servers, "pid"), {}, **QUICK)).text)
    os.kill(pid, 9)
    lost = await servers.call(tool_of(servers, "echo"), {"text": "x"}, **QUICK)
    assert lost.is_error
    assert "reopened for the next call" in lost.text
    again = await servers.call(tool_of(servers, "pid"), {}, **QUICK)
    assert not again.is_error
    assert int(again.text) != pid


# Changes to a server's tool list


async def test_the_tool_list_follows_list_changed_over_http(http_server, open_servers):
    servers = open_servers({"box": ServerConfig(name="box", url=http_server.url)})
    await servers.tools()
    assert servers.find("box__added_0") is None
    added = await servers.call(tool_of(servers, "grow"), {}, **QUICK)
    assert added.text == "added_0"
    await eventually(lambda: _lists(servers, "box__added_0"))
    assert (await servers.call(tool_of(servers, "added_0"), {}, **QUICK)).text == "new"


async def test_the_tool_list_follows_list_changed_over_stdio(era, open_servers):
    servers = open_servers({"box": stdio_config(legacy=era == "legacy")})
    await servers.tools()
    await servers.call(tool_of(servers, "grow"), {}, **QUICK)
    await eventually(lambda: _lists(servers, "box__added_0"))


async def _lists(servers: ToolServers, function_name: str) -> bool:
    return any(tool.function_name == function_name for tool in await servers.tools())


# Closing


async def test_aclose_ends_stdio_servers(open_servers):
    servers = open_servers({"box": stdio_config()})
    await servers.tools()
    pid = int((await servers.call(tool_of(servers, "pid"), {}, **QUICK)).text)
    await servers.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert await servers.tools() == []
    result = await servers.call(tool_of(servers, "echo"), {"text": "x"}, **QUICK)
    assert result.is_error and "shutting down" in result.text


# The built-in server


async def test_builtin_server_calculates_and_tells_the_time(open_servers):
    servers = open_servers(builtin_config())
    tools = {tool.name: tool for tool in await servers.tools()}
    assert set(tools) == {"current_time", "calculate"}
    assert all(tool.read_only for tool in tools.values())

    async def calc(expression: str):
        return await servers.call(tools["calculate"], {"expression": expression}, **QUICK)

    assert (await calc("2 * (3 + 4) ** 2 / sqrt(16)")).text == "24.5"
    refused = await calc("__import__('os').system('true')")
    assert refused.is_error and "attribute access is not allowed" in refused.text
    started = time.monotonic()
    assert "unknown function '__import__'" in (await calc("__import__('os')")).text
    huge = await calc("9**9**9")
    assert huge.is_error and "more than 1000 digits" in huge.text
    assert time.monotonic() - started < 1

    now = await servers.call(tools["current_time"], {}, **QUICK)
    assert now.text.endswith(", UTC)")
    paris = await servers.call(tools["current_time"], {"timezone": "Europe/Paris"}, **QUICK)
    assert "(" in paris.text and paris.text.endswith(", Europe/Paris)")
    assert paris.text[19:25] in {"+01:00", "+02:00"}
    unknown = await servers.call(tools["current_time"], {"timezone": "Mars/Olympus"}, **QUICK)
    assert unknown.is_error and "Unknown time zone 'Mars/Olympus'" in unknown.text


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("-2 ** 2", -4),
        ("2 ** -1", 0.5),
        ("10 / 4", 2.5),
        ("+5 - -5", 10),
        ("sqrt(2) ** 2", pytest.approx(2)),
        ("sin(pi / 2) + cos(0)", 2.0),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", pytest.approx(3.0)),
        ("factorial(10)", 3628800),
        ("round(2.567, 2)", 2.57),
        ("max(1, 5, 3)", 5),
        ("2 ** 100", 2**100),
        ("1_000 * 1e3", 1e6),
    ],
)
def test_calculate_evaluates_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("x + 1", "unknown name 'x'"),
        ("__import__('os')", "unknown function '__import__'"),
        ("(1).__class__", "attribute access is not allowed"),
        ("math.sqrt(4)", "attribute access is not allowed"),
        ("sqrt(x=4)", "takes no keyword arguments"),
        ("'a' * 3", "'a' is not a number"),
        ("True + 1", "True is not a real number"),
        ("1j * 1j", "not a real number"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("2 ^ 3", "write **"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "math domain error"),
        ("(-8) ** 0.5", "not a real number"),
        ("9 ** 9 ** 9", "more than 1000 digits"),
        ("10 ** 1001", "more than 1000 digits"),
        ("factorial(100000)", "factorial is limited"),
        ("round(5, -10 ** 300)", "round() takes"),
        ("exp(1000)", "too large"),
        ("1e308 * 10", "too large"),
        ("-" * 2000 + "1", "longer than 1000 characters"),
        ("-" * 990 + "1", "nested too deeply"),
        ("1 +", "not a valid expression"),
    ],
)
def test_calculate_refuses_what_is_not_plain_arithmetic(expression, reason):
    started = time.monotonic()
    with pytest.raises(CalculationError, match=re.escape(reason)):
        calculate(expression)
    assert time.monotonic() - started < 0.5


def test_builtin_server_does_not_import_django():
    code = "import sys, conversations.tools.builtin; sys.exit('django' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0
    )
