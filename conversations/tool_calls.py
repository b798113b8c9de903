"""The tool calls of one reply: which tools it offers, and running the calls it asks for.

A round's calls run concurrently, each with a timeout and a cap on its result. A call
to a tool that may change things waits for the user's Allow or Deny first, unless an
administrator allowed it. Every change of a call is stored and shown at once, so a
reload shows the exact state, and a call is run once: the state it reached is what the
model is told, never a reason to run it again.
"""

import asyncio
import copy
import json
import logging
import time

from channels.db import database_sync_to_async
from django.conf import settings

from .events import ReplyTools, sockets_group
from .models import UNSTORABLE, ToolPolicy
from .rendering import tools_html
from .runtime import runtime
from .tools import Tool

log = logging.getLogger(__name__)


async def tool_panel(conversation_id: int) -> dict:
    """What a conversation's Tools panel shows: each server, its state, and the tools an
    administrator left on, each on or off for this conversation."""
    servers = runtime.tool_servers()
    if servers is None:
        return {"tools_off": True, "tools_error": runtime.tool_config_error}
    listing = asyncio.ensure_future(listed_tools(servers))
    policy = await database_sync_to_async(ToolPolicy.for_conversation)(conversation_id)
    await listing
    panel = []
    for state in servers.states():
        tools = [
            {
                "function_name": tool.function_name,
                "name": tool.name,
                "description": tool.description,
                "on": tool.function_name not in policy.switched_off,
                "asks": policy.asks(tool),
            }
            for tool in state.tools
            if policy.site_offers(tool)
        ]
        panel.append(
            {"name": state.name, "state": state.state, "error": state.error, "tools": tools}
        )
    return {"tool_servers": panel}


async def listed_tools(servers) -> list[Tool]:
    try:
        async with asyncio.timeout(settings.CHAT_TOOL_CONNECT_TIMEOUT + 1):
            return await servers.tools()
    except TimeoutError:
        log.warning("listing the tool servers' tools took too long")
        return []


class ToolRunner:
    def __init__(self, stream, policy: ToolPolicy):
        self.stream = stream  # the replies.ReplyStream whose calls these are
        self.servers = None
        self.policy = policy  # read when the reply started
        self.offered: dict[str, Tool] = {}  # function name -> tool
        self._decisions: dict[str, asyncio.Future[bool]] = {}
        self._saving = asyncio.Lock()

    async def offer(self, base_url: str, model: str) -> list[dict]:
        """The ``tools`` of the reply's requests: every enabled tool of every reachable server."""
        servers = runtime.tool_servers()
        if servers is None or (base_url, model) in runtime.without_tools:
            return []
        self.servers = servers
        listed = await listed_tools(servers)
        self.offered = {t.function_name: t for t in listed if self.policy.offers(t)}
        failed = [state for state in servers.states() if state.state == "failed"]
        if failed:
            # Chatting goes on without their tools; the page says why.
            await self.stream.publisher.status(
                " ".join(f"Tools of “{s.name}” are unavailable: {s.error}" for s in failed)
            )
        return [tool.as_openai() for tool in self.offered.values()]

    async def run(self, calls: list[dict]) -> None:
        """Run one round's calls (dicts of the reply's rounds, updated in place)."""
        runs = []
        for call in calls:
            tool, arguments = self._prepare(call)
            if tool is not None:
                runs.append(self._run(call, tool, arguments))
        await self._changed()
        try:
            await asyncio.gather(*runs)
        finally:
            self._decisions.clear()

    def decide(self, call_id: str, allow: bool) -> None:
        """The user's Allow or Deny for a waiting call (the first answer counts)."""
        decision = self._decisions.get(call_id)
        if decision is not None and not decision.done():
            decision.set_result(allow)

    def _prepare(self, call: dict) -> tuple[Tool | None, dict]:
        """The tool and arguments of a call, or None with the call answered as an error."""
        tool = self.offered.get(call["name"])
        if tool is not None:
            call["server"], call["tool"] = tool.server, tool.name
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except ValueError as error:
            arguments, problem = None, f"The arguments are not valid JSON ({error})."
        else:
            problem = "" if isinstance(arguments, dict) else "The arguments must be a JSON object."
        if tool is None:
            problem = f"There is no tool named {call['name']!r} here."
        if problem:
            call["state"], call["result"] = "error", problem
            return None, {}
        asks = self.policy.asks(tool)
        if asks:
            self._decisions[call["id"]] = asyncio.get_running_loop().create_future()
        call["state"] = "waiting" if asks else "running"
        return tool, arguments

    async def _run(self, call: dict, tool: Tool, arguments: dict) -> None:
        if call["state"] == "waiting":
            if not await self._allowed(call):
                call["state"] = "denied"
                await self._changed()
                return
            call["state"] = "running"
            await self._changed()
        started = time.monotonic()
        result = await self.servers.call(
            tool,
            arguments,
            timeout=settings.CHAT_TOOL_TIMEOUT,
            max_chars=settings.CHAT_TOOL_MAX_RESULT_CHARS,
        )
        call["seconds"] = round(time.monotonic() - started, 3)
        call["state"] = "error" if result.is_error else "done"
        call["result"] = UNSTORABLE.sub("\ufffd", result.text)
        await self._changed()

    async def _allowed(self, call: dict) -> bool:
        try:
            async with asyncio.timeout(settings.CHAT_TOOL_CONFIRM_TIMEOUT):
                return await self._decisions[call["id"]]
        except TimeoutError:
            return False

    async def _changed(self) -> None:
        """Show the reply's calls as they are now on every page, and store them."""
        stream = self.stream
        rounds = copy.deepcopy(stream.reply.rounds)
        stream.message.tool_rounds = rounds
        event = ReplyTools(stream.message.pk, tools_html(stream.message))
        await stream.layer.group_send(
            sockets_group(stream.message.conversation_id), event.as_message()
        )
        async with self._saving:
            try:
                await database_sync_to_async(stream.message.save_tool_rounds)(
                    stream.reply.text, rounds
                )
            except Exception:  # the reply goes on; its final write stores them again
                log.exception("storing the tool calls of reply %s failed", stream.message.pk)
