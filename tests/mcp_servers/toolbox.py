"""A test MCP server: served over streamable HTTP by the tests, or over stdio when run.

    python tests/mcp_servers/toolbox.py [--legacy]

`--legacy` (or `build(legacy=True)`) makes it refuse `server/discover`, as servers from
before the 2026-07-28 protocol do, so clients fall back to the `initialize` handshake.
"""

import asyncio
import json
import os
import sys

import anyio
from mcp import MCPError, stdio_server
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.message import SessionMessage
from mcp.types import (
    METHOD_NOT_FOUND,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    RequestParams,
    ToolAnnotations,
)
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

# The smallest valid PNG: one transparent pixel.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def build(*, legacy: bool = False) -> MCPServer:
    server = MCPServer("toolbox", log_level="WARNING")
    arrivals: dict[str, int] = {}
    met: dict[str, asyncio.Event] = {}
    counts = {"started": 0, "cancelled": 0, "finished": 0}

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def echo(text: str) -> str:
        """Say the text back."""
        return text

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    def shout(text: str) -> str:
        """Say the text back, louder."""
        return text.upper()

    @server.tool()
    def refuse(reason: str) -> str:
        """Fail on purpose, with a message for the model."""
        raise ToolError(f"refused: {reason}")

    @server.tool()
    def explode() -> str:
        """Raise an unexpected exception."""
        raise RuntimeError("the secret internals")

    @server.tool()
    def big(size: int) -> str:
        """Return `size` characters."""
        return "x" * size

    @server.tool()
    def picture() -> list:
        """A caption and an image."""
        return ["a pixel", Image(data=PIXEL, format="png")]

    @server.tool()
    async def hold(seconds: float) -> str:
        """Take `seconds` to answer; counts calls started, cancelled and finished."""
        counts["started"] += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            counts["cancelled"] += 1
            raise
        counts["finished"] += 1
        return f"held {seconds}"

    @server.tool()
    def status() -> str:
        """The counts of `hold` calls."""
        return json.dumps(counts)

    @server.tool()
    async def meet(group: str, size: int = 2) -> str:
        """Answer once `size` calls of this group are running at the same time."""
        event = met.setdefault(group, asyncio.Event())
        arrivals[group] = arrivals.get(group, 0) + 1
        if arrivals[group] >= size:
            event.set()
        try:
            async with asyncio.timeout(5):
                await event.wait()
        except TimeoutError:
            raise ToolError(
                f"only {arrivals[group]} of {size} calls were running at once"
            ) from None
        return f"met {size}"

    @server.tool()
    async def grow(ctx: Context) -> str:
        """Add a tool, and tell the client its tool list changed."""
        name = f"added_{sum(tool.name.startswith('added_') for tool in await server.list_tools())}"
        server.add_tool(lambda: "new", name=name, description="Added while running.")
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            await ctx.notify_tools_changed()
        else:
            await ctx.session.send_tool_list_changed()
        return name

    @server.tool()
    def pid() -> int:
        """This server's process id."""
        return os.getpid()

    if legacy:
        # Over streamable HTTP each request stands alone, so refusing the method is enough.
        async def no_discover(ctx, params) -> None:
            raise MCPError(METHOD_NOT_FOUND, "Method not found")

        server._lowlevel_server.add_request_handler("server/discover", RequestParams, no_discover)
    return server


async def serve_legacy_stdio(server: MCPServer) -> None:
    """Serve stdio as a pre-2026 server would: `server/discover` is an unknown method.

    Over stdio the SDK's server commits to an era on the first request, so the probe is
    answered here, before the server sees it.
    """
    lowlevel = server._lowlevel_server
    async with stdio_server() as (read, write):
        forward, inner = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def refuse_discover() -> None:
            async with forward:
                async for item in read:
                    message = getattr(item, "message", None)
                    if isinstance(message, JSONRPCRequest) and message.method == "server/discover":
                        error = ErrorData(code=METHOD_NOT_FOUND, message="Method not found")
                        reply = JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
                        await write.send(SessionMessage(reply))
                    else:
                        await forward.send(item)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refuse_discover)
            await lowlevel.run(inner, write, lowlevel.create_initialization_options())
            tasks.cancel_scope.cancel()


if __name__ == "__main__":
    if "--legacy" in sys.argv:
        anyio.run(serve_legacy_stdio, build())
    else:
        build().run()
