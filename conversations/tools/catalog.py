"""The tools the model is offered, and what a call gives back to it."""

import hashlib
import re
from dataclasses import dataclass, field

MAX_FUNCTION_NAME = 64  # what OpenAI-compatible servers accept for a function name
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """One tool of one MCP server, as listed by that server."""

    server: str
    name: str
    description: str
    input_schema: dict = field(hash=False)  # compared, but left out of the hash
    read_only: bool = False  # the server's readOnlyHint annotation says the tool changes nothing

    @property
    def function_name(self) -> str:
        """The name the model calls it by: `server__tool`, safe characters, at most 64 long."""
        return function_name(self.server, self.name)

    def as_openai(self) -> dict:
        """The chat-completions `tools` entry for this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.function_name,
                "description": self.description,
                "parameters": self.input_schema or dict(_EMPTY_PARAMETERS),
            },
        }


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gives back to the model (the tool message's content)."""

    text: str
    is_error: bool
    truncated: bool = False


def function_name(server: str, tool: str) -> str:
    full = f"{server}__{tool}"
    safe = _NOT_ALLOWED.sub("_", full)
    if len(safe) <= MAX_FUNCTION_NAME:
        return safe
    # Long names keep a readable head and a short hash of the whole name, so they stay
    # distinct and the same from one listing to the next.
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{safe[: MAX_FUNCTION_NAME - len(digest) - 1]}_{digest}"
