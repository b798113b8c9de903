"""Template filters for the chat pages: ``{% load chat %}``."""

from django import template
from django.utils.safestring import mark_safe

from conversations.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text) -> str:
    """``{{ message.content|markdown }}``: an assistant message as sanitized HTML."""
    return mark_safe(render_markdown(str(text or "")))  # sanitized by render_markdown


@register.simple_tag(takes_context=True)
def assistant_text(context, message) -> str:
    """``{% assistant_text message %}``: a reply's finished blocks as HTML, either those
    rendered while it streams (a snapshot's ``rendered``) or its text rendered now."""
    rendered = context.get("rendered")
    if rendered is not None:
        return mark_safe(rendered)  # sanitized by the streaming renderer
    return markdown(message.content)


@register.simple_tag(takes_context=True)
def reasoning_text(context, message) -> str:
    """``{% reasoning_text message %}``: like ``assistant_text``, for the reasoning above it."""
    rendered = context.get("reasoning_rendered")
    if rendered is not None:
        return mark_safe(rendered)  # sanitized by the streaming renderer
    return markdown(message.reasoning)
