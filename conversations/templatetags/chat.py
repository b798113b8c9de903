"""Template filters for the chat pages: ``{% load chat %}``."""

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
