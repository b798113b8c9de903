"""A streaming client for OpenAI-compatible chat-completions servers; no Django here.

``stream_chat`` posts a conversation with ``stream: true`` and yields small,
typed events (``TextDelta``, ``ReasoningDelta``, ``ToolCallDelta``, ``Finish``,
...) as the Server-Sent Events arrive. Every failure is an ``UpstreamError``
whose ``str()`` is fit to show a person and whose ``retryable`` says whether
trying again could help. ``complete_chat`` asks for one completion whole
(``stream: false``) and returns its text. The caller owns the HTTP client:
``new_client()`` once, passed as ``client=`` to every call, closed at shutdown.
"""

from .client import complete_chat, list_models, new_client, stream_chat
from .errors import (
    ConnectError,
    HTTPStatusError,
    IdleTimeout,
    StreamError,
    StreamInterrupted,
    UpstreamError,
)
from .events import (
    Event,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    TextWasReasoning,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ConnectError",
    "Event",
    "Finish",
    "HTTPStatusError",
    "IdleTimeout",
    "ReasoningDelta",
    "RefusalDelta",
    "StreamError",
    "StreamInterrupted",
    "TextDelta",
    "TextWasReasoning",
    "ToolCallDelta",
    "UpstreamError",
    "Usage",
    "complete_chat",
    "list_models",
    "new_client",
    "stream_chat",
]
