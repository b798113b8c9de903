"""The site's own small MCP server: the current time and safe arithmetic.

Run over stdio with `python -m conversations.tools.builtin`; it needs no Django.
"""

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from conversations.tools.arithmetic import CalculationError
from conversations.tools.arithmetic import calculate as evaluate

server = MCPServer(
    "builtin",
    instructions="Small helpers: the current date and time, and exact arithmetic.",
    log_level="WARNING",
)


@server.tool(
    annotations=ToolAnnotations(title="Current time", read_only_hint=True, open_world_hint=False)
)
def current_time(timezone: str | None = None) -> str:
    """The current date, time and weekday, in UTC or in the given IANA time zone
    (such as "Europe/Paris" or "America/New_York")."""
    if timezone:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(
                f"Unknown time zone {timezone!r}; use an IANA name such as Europe/Paris"
            ) from None
    else:
        zone, timezone = ZoneInfo("UTC"), "UTC"
    now = datetime.now(zone).replace(microsecond=0)
    return f"{now.isoformat()} ({now.strftime('%A')}, {timezone})"


@server.tool(
    annotations=ToolAnnotations(title="Calculator", read_only_hint=True, open_world_hint=False)
)
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: + - * / // % ** and parentheses, numbers,
    pi, e, and functions such as sqrt, exp, log (natural, or log(x, base)), log10, sin, cos,
    tan (radians), degrees, radians, floor, ceil, round, abs, min, max, factorial."""
    try:
        return str(evaluate(expression))
    except CalculationError as exc:
        raise ToolError(f"Cannot calculate {expression!r}: {exc}") from None


if __name__ == "__main__":
    server.run()
