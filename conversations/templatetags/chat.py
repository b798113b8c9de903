"""Template filters for the chat pages: ``{% load chat %}``."""

import json

from django import template
from django.utils.safestring import mark_safe

from conversations.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text) -> str:
    """``{{ message.content|markdown }}``: an assistant message as sanitized HTML."""
    return mark_safe(render_markdown(str(text or "")))  # sanitized by render_markdown


# Where a snapshot passes the HTML its streaming renderer holds, per field of the message.
RENDERED = {"content": "rendered", "reasoning": "reasoning_rendered"}


@register.simple_tag(takes_context=True)
def finished_blocks(context, message, field="content") -> str:
    """``{% finished_blocks message "reasoning" %}``: the finished blocks of a reply's
    answer (or reasoning) as HTML: those rendered while it streams, when a snapshot
    passes them, else its stored text rendered now."""
    rendered = context.get(RENDERED[field])
    if rendered is not None:
        return mark_safe(rendered)  # sanitized by the streaming renderer
    return markdown(getattr(message, field))


@register.filter
def pretty_json(text) -> str:
    """A tool call's arguments, indented when they are JSON (shown as text, escaped)."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(text or "")


TOOL_STATES = {
    "asked": "Asked for",
    "waiting": "Asks your permission to run",
    "running": "Running…",
    "done": "Done",
    "error": "Failed",
    "denied": "Denied",
    "not_run": "Not run",
    "stopped": "Stopped while it ran",
    "interrupted": "Interrupted while it ran",
}


@register.filter
def call_state(call, message_status) -> str:
    """A call's state as shown: a reply that ended (even by a crash, which stored nothing
    more) has no call waiting or running any more."""
    state = call.get("state", "")
    if message_status != "streaming":
        return {"asked": "not_run", "waiting": "not_run", "running": "interrupted"}.get(
            state, state
        )
    return state


@register.filter
def tool_state(call, state) -> str:
    """A call's state in words, with its duration once it answered."""
    label = TOOL_STATES.get(state, str(state))
    seconds = call.get("seconds")
    if isinstance(seconds, int | float):
        label += f" in {seconds:.2f} s" if seconds < 10 else f" in {seconds:.0f} s"
    return label
