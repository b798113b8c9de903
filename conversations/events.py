"""What reply tasks and sockets say to each other through the channel layer.

Each event is a dataclass; on the wire it is the dict Channels expects, its
``type`` naming the handler (``reply.delta`` -> ``reply_delta``). Two groups
per conversation: its open sockets, and its reply task (at most one runs).
"""

from dataclasses import dataclass
from typing import ClassVar


def sockets_group(conversation_id: int) -> str:
    """Every open socket of a conversation."""
    return f"conversation-{conversation_id}"


def reply_group(conversation_id: int) -> str:
    """The reply task of a conversation, wherever it runs."""
    return f"conversation-{conversation_id}-reply"


class Event:
    type: ClassVar[str]
    __match_args__: ClassVar[tuple[str, ...]]  # the dataclass's fields, in order

    def as_message(self) -> dict:
        return {"type": self.type} | {name: getattr(self, name) for name in self.__match_args__}


# --- from a reply to the sockets of its conversation ------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyStarted(Event):
    """A reply begins (new, regenerated or continued): ``html`` puts it on the page.

    ``offset`` is where its text starts: 0, or the length of a continued reply.
    """

    type: ClassVar[str] = "reply.started"
    message_id: int
    offset: int
    html: str


@dataclass(frozen=True, slots=True)
class ReplyDelta(Event):
    """The reply's text from ``start`` to ``end``, as HTML that extends the message."""

    type: ClassVar[str] = "reply.delta"
    message_id: int
    start: int
    end: int
    html: str


@dataclass(frozen=True, slots=True)
class ReplySnapshot(Event):
    """The whole message element at ``offset``, for one socket that asked (ReplySync)."""

    type: ClassVar[str] = "reply.snapshot"
    message_id: int
    offset: int
    html: str


@dataclass(frozen=True, slots=True)
class ReplyStatus(Event):
    """The line under a streaming reply changed (retrying, trying again)."""

    type: ClassVar[str] = "reply.status"
    message_id: int
    html: str


@dataclass(frozen=True, slots=True)
class ReplyTools(Event):
    """The reply's tool calls changed (asked for, waiting for the user, running, answered):
    ``html`` replaces its tool calls on the page."""

    type: ClassVar[str] = "reply.tools"
    message_id: int
    html: str


@dataclass(frozen=True, slots=True)
class ReplyFinished(Event):
    """The reply ended and is stored; ``html`` is its final element."""

    type: ClassVar[str] = "reply.finished"
    message_id: int
    html: str


@dataclass(frozen=True, slots=True)
class ConversationRetitled(Event):
    """The model wrote the conversation's title: ``html`` puts it in the heading and the list."""

    type: ClassVar[str] = "conversation.retitled"
    html: str


@dataclass(frozen=True, slots=True)
class BranchSwitched(Event):
    """Another version of a turn is shown (chosen in one tab): ``frames`` put its branch on
    every page of the conversation, in order (a long branch takes several)."""

    type: ClassVar[str] = "branch.switched"
    frames: list[str]


@dataclass(frozen=True, slots=True)
class SiteClosing(Event):
    """The process is stopping: after the final elements above, close with 1001 (the page
    reconnects, to another process or to this one restarted)."""

    type: ClassVar[str] = "site.closing"


# --- from a socket to the reply task of its conversation --------------------------------


@dataclass(frozen=True, slots=True)
class StopReply(Event):
    type: ClassVar[str] = "reply.stop"


@dataclass(frozen=True, slots=True)
class SyncReply(Event):
    """Send a snapshot to the socket whose channel is ``reply_to``."""

    type: ClassVar[str] = "reply.sync"
    reply_to: str


@dataclass(frozen=True, slots=True)
class DecideToolCall(Event):
    """The user allowed (or denied) the tool call ``call_id`` of reply ``message_id``."""

    type: ClassVar[str] = "reply.decide"
    message_id: int
    call_id: str
    allow: bool


TO_SOCKETS = {
    e.type: e
    for e in (
        ReplyStarted,
        ReplyDelta,
        ReplySnapshot,
        ReplyStatus,
        ReplyTools,
        ReplyFinished,
        ConversationRetitled,
        BranchSwitched,
        SiteClosing,
    )
}
TO_REPLIES = {e.type: e for e in (StopReply, SyncReply, DecideToolCall)}


def parse(message: dict, kinds: dict[str, type[Event]]) -> Event | None:
    """The event a channel-layer message carries, or None if it is not one of ``kinds``."""
    kind = kinds.get(message.get("type"))
    if kind is None:
        return None
    return kind(*[message[name] for name in kind.__match_args__])
