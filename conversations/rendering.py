"""Message text -> safe HTML, and the HTML fragments pushed to browsers.

Model output is untrusted: everything here escapes it. While a reply streams,
:class:`StreamingRenderer` turns each new piece of text into HTML once, so the
cost of a reply stays linear in its length.
"""

from django.template.loader import render_to_string
from django.utils.html import escape

PAGE = "conversations/conversation_detail.html"


def render_text(text: str) -> str:
    """A message's text as HTML. Line breaks are kept by CSS (white-space: pre-wrap)."""
    return escape(text)


class StreamingRenderer:
    """Renders a growing reply piece by piece.

    ``feed(text)`` returns ``(appended_html, tail_html)``: HTML to append after
    what was already sent, and the HTML of the still-open tail that replaces
    the previous tail (empty while the text needs no tail).
    """

    def feed(self, text: str) -> tuple[str, str]:
        return render_text(text), ""


def message_html(message, **context) -> str:
    """The whole message element, exactly as the page renders it."""
    return render_to_string(f"{PAGE}#message", {"message": message, **context})


def footer_html(message, notice: str = "") -> str:
    """The line under a reply: streaming indicator, retry notice, how it ended, usage."""
    return render_to_string(f"{PAGE}#footer", {"message": message, "notice": notice})


def delta_html(message_id: int, appended: str, tail: str) -> str:
    """An out-of-band fragment that extends a streaming message in place."""
    html = ""
    if appended:
        html += f'<div hx-swap-oob="beforeend:#message-{message_id}-text">{appended}</div>'
    if tail:
        html += f'<div id="message-{message_id}-tail" hx-swap-oob="true">{tail}</div>'
    return html


def append_messages_html(messages) -> str:
    """New messages added at the end of the conversation."""
    inner = "".join(message_html(m) for m in messages)
    return f'<div hx-swap-oob="beforeend:#messages">{inner}</div>'


def notice_html(text: str, level: str = "error", refused: str = "") -> str:
    """A message about the socket itself (bad frame, refused send), shown above the composer.

    ``refused="send"`` tells the page its last message was not taken, so it
    puts the text back in the composer.
    """
    context = {"notice": text, "level": level, "refused": refused}
    return render_to_string(f"{PAGE}#notice", context)
