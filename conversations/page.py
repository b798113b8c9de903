"""The conversation page's contract with Python and chat.js, spelled once.

Element ids of a message, the websocket's close codes and the size limit: the
templates read them from here (through the message and the page context), and
chat.js reads the close codes and limits from data attributes on the page.
"""

from dataclasses import dataclass

from django.conf import settings

# Websocket close codes (4000-4999 are the application's own).
CLOSE_GOING_AWAY = 1001  # the process stops; the page reconnects
CLOSE_LOGGED_OUT = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_SLOW = 4408  # the page fell too far behind reading; it reconnects and catches up
CLOSE_TOO_MANY_SOCKETS = 4429  # the user has CHAT_SOCKETS_PER_USER open in this process


@dataclass(frozen=True, slots=True)
class MessageIds:
    """The ids of one message's elements: the turn holds the message and its footer."""

    pk: int

    @property
    def turn(self) -> str:
        return f"turn-{self.pk}"

    @property
    def message(self) -> str:
        return f"message-{self.pk}"

    @property
    def text(self) -> str:
        """The finished blocks of the message; a streaming reply appends to it."""
        return f"message-{self.pk}-text"

    @property
    def tail(self) -> str:
        """The block still being written, replaced whole on every frame."""
        return f"message-{self.pk}-tail"

    @property
    def footer(self) -> str:
        return f"message-{self.pk}-footer"

    # A reply's reasoning, above its message element: finished blocks, tail, and the
    # summary line ("Thinking…", "Thought for 4 s").

    @property
    def tools(self) -> str:
        """The reply's tool calls, between its reasoning and its message element."""
        return f"message-{self.pk}-tools"

    @property
    def reasoning(self) -> str:
        return f"message-{self.pk}-reasoning"

    @property
    def reasoning_summary(self) -> str:
        return f"message-{self.pk}-reasoning-summary"

    @property
    def reasoning_text(self) -> str:
        return f"message-{self.pk}-reasoning-text"

    @property
    def reasoning_tail(self) -> str:
        return f"message-{self.pk}-reasoning-tail"


def max_frame_chars() -> int:
    """The longest websocket frame read: room for the JSON around the longest message."""
    # JSON escapes can double a message's length.
    return settings.CHAT_MAX_MESSAGE_CHARS * 2 + 4096


def context() -> dict:
    """What the conversation page hands to chat.js (as data attributes)."""
    return {
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        "close_logged_out": CLOSE_LOGGED_OUT,
        "close_not_found": CLOSE_NOT_FOUND,
        "close_too_many": CLOSE_TOO_MANY_SOCKETS,
        "close_too_slow": CLOSE_TOO_SLOW,
    }
