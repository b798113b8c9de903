"""Turning an MCP tool result into the text the model reads next."""

import json

import mcp.types as mcp_types

from .catalog import ToolResult


def from_call_result(result: mcp_types.CallToolResult, *, max_chars: int) -> ToolResult:
    """Text items joined; media and resources named in a short note, never fetched."""
    parts = [_describe(item) for item in result.content]
    text = "\n".join(part for part in parts if part)
    has_text = any(isinstance(item, mcp_types.TextContent) for item in result.content)
    if not has_text and result.structured_content is not None:
        structured = json.dumps(result.structured_content, ensure_ascii=False, default=str)
        text = f"{text}\n{structured}" if text else structured
    if not text:
        text = "(the tool failed without a message)" if result.is_error else "(no output)"
    return limited(text, is_error=result.is_error, max_chars=max_chars)


def failure(text: str) -> ToolResult:
    """A call that did not produce a result: timeout, lost connection, error response."""
    return ToolResult(text=text, is_error=True)


def limited(text: str, *, is_error: bool, max_chars: int) -> ToolResult:
    if len(text) <= max_chars:
        return ToolResult(text=text, is_error=is_error)
    cut = text[: max(max_chars, 0)]
    note = f"[output truncated: {len(cut)} of {len(text)} characters]"
    return ToolResult(text=f"{cut}\n{note}", is_error=is_error, truncated=True)


def _describe(item: mcp_types.ContentBlock) -> str:
    match item:
        case mcp_types.TextContent():
            return item.text
        case mcp_types.ImageContent() | mcp_types.AudioContent():
            kind = "image" if isinstance(item, mcp_types.ImageContent) else "audio"
            return f"[{kind}: {item.mime_type}, {_decoded_size(item.data)} bytes, not shown]"
        case mcp_types.ResourceLink():
            return f"[resource link: {item.name} <{item.uri}>, not fetched]"
        case mcp_types.EmbeddedResource():
            resource = item.resource
            mime = f" ({resource.mime_type})" if resource.mime_type else ""
            if isinstance(resource, mcp_types.TextResourceContents):
                return f"[resource <{resource.uri}>{mime}]\n{resource.text}"
            size = _decoded_size(resource.blob)
            return f"[resource <{resource.uri}>{mime}, {size} bytes, not shown]"
    return f"[{getattr(item, 'type', 'unknown')} content, not shown]"


def _decoded_size(base64_data: str) -> int:
    return len(base64_data) * 3 // 4 - base64_data[-2:].count("=")
