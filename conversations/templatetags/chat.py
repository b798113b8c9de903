"""Template filters for the chat pages: ``{% load chat %}``."""

from django import template
from django.utils.safestring import mark_safe

from conversations.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text) -> str:
    """``{{ message.content|markdown }}``: an assistant message as sanitized HTML."""
    return mark_safe(render_markdown(str(text or "")))  # sanitized by render_markdown
