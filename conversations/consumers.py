"""The websocket adapter: validates actions, joins the group, starts and stops replies.

Client to server: JSON objects with an ``action`` (``send``, ``stop``, ``continue``,
``regenerate``, ``sync``); see the README for the protocol.
Server to client: HTML fragments that htmx swaps by id.

A consumer never streams inside ``receive``: a reply runs as its own task
(replies.py). The consumer forwards that task's frames to its socket, using
the offsets on each frame so its page gets every character exactly once,
however late it joined.
"""

import asyncio
import json
import logging
import math
from datetime import timedelta
from importlib import import_module
from types import SimpleNamespace

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib import auth
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import replies
from .models import Conversation, Message
from .rendering import append_messages_html, message_html, notice_html, retitled_html

log = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's own).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


BUSY = (
    "A reply is still being written in this conversation. "
    "Wait for it to finish or stop it, then send again."
)


class ActionRefused(Exception):
    """An action that cannot apply; its text is shown to the user."""


class ReplyInProgress(ActionRefused):
    def __init__(self, message: str = BUSY):
        super().__init__(message)


class ConversationConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.session_key = self.scope["session"].session_key
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await get_conversation(user, conversation_id)
        if self.conversation is None:
            await self.accept()
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = replies.group_name(self.conversation.pk)
        # Per streaming message: the offset this socket's page has reached.
        # A message with no entry waits for a snapshot before it gets frames.
        self.offsets: dict[int, int] = {}
        self.awaiting_snapshot: set[int] = set()
        self.orphan_check: asyncio.Task | None = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "orphan_check", None) is not None:
            self.orphan_check.cancel()
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    # Events that only forward HTML to the socket. Channels prepares the database
    # connection before every handler; these need none, and would otherwise queue
    # each frame behind the database thread.
    FORWARDED = frozenset(
        {
            "message.created",
            "message.resumed",
            "reply.delta",
            "reply.snapshot",
            "reply.status",
            "reply.finished",
        }
    )

    async def dispatch(self, message):
        if message["type"] in self.FORWARDED:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)

    # --- client actions ----------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self.notify("This connection takes JSON text frames only.")
            return
        if len(text_data) > max_frame_chars():
            await self.notify(
                f"That message is too long: the limit is {settings.CHAT_MAX_MESSAGE_CHARS:,} "
                "characters.",
                refused="send",
            )
            return
        try:
            data = json.loads(text_data)
        except ValueError:
            await self.notify("The server could not read that request (it is not valid JSON).")
            return
        action = data.get("action") if isinstance(data, dict) else None
        if not await session_belongs_to(self.session_key, self.user):
            # Logged out (or the password changed) elsewhere: this socket's rights end too.
            await self.notify("You have been logged out. Reload the page to log in again.")
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        handler = {
            "send": self.send_message,
            "stop": self.stop_reply,
            "sync": self.sync,
            "continue": self.continue_reply,
            "regenerate": self.regenerate_reply,
        }.get(action)
        if handler is None:
            await self.notify(f"Unknown action {str(action)[:40]!r}.")
            return
        await handler(data)

    async def send_message(self, data):
        content = data.get("content")
        if not isinstance(content, str) or not content.strip():
            await self.notify("Type a message first.", refused="send")
            return
        if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
            await self.notify(
                f"Your message is {len(content):,} characters long; the limit is "
                f"{settings.CHAT_MAX_MESSAGE_CHARS:,}. Nothing was sent.",
                refused="send",
            )
            return
        model = self.conversation.model or await replies.default_model()
        try:
            sent, reply, prompt = await begin_reply(self.conversation.pk, content, model)
        except ActionRefused as refusal:
            await self.notify(str(refusal), refused="send")
            return
        html = append_messages_html([sent, reply])
        if not self.conversation.title:  # the first message names the conversation
            self.conversation.title = sent.conversation.title
            html += retitled_html(self.conversation)
        await self.start(reply, prompt, {"type": "message.created", "html": html})

    async def stop_reply(self, data):
        if await sweep_orphans(self.conversation.pk):
            return  # its process is gone: it was ended as interrupted, and the page told
        if not await has_streaming_reply(self.conversation.pk):
            await self.notify("There is no reply to stop.", level="info")
            return
        await self.channel_layer.group_send(
            replies.control_group_name(self.conversation.pk), {"type": "reply.stop"}
        )

    async def continue_reply(self, data):
        """Carry on writing an interrupted, stopped or length-cut reply into the same message."""
        try:
            reply, prompt = await reopen_reply(self.conversation.pk, message_id_of(data))
        except ActionRefused as refusal:
            await self.notify(str(refusal))
            return
        event = {"type": "message.resumed", "offset": len(reply.content)}
        await self.start(reply, prompt, event | {"html": message_html(reply)})

    async def regenerate_reply(self, data):
        """Replace the latest reply with a new one written from the same history."""
        model = self.conversation.model or await replies.default_model()
        try:
            old_id, reply, prompt = await replace_reply(
                self.conversation.pk, message_id_of(data), model
            )
        except ActionRefused as refusal:
            await self.notify(str(refusal))
            return
        html = removed_html(old_id) + append_messages_html([reply])
        await self.start(reply, prompt, {"type": "message.created", "html": html})

    async def start(self, reply, prompt, event: dict):
        """Show the reply on every socket of the conversation, then start writing it."""
        await self.channel_layer.group_send(self.group, event | {"reply_id": reply.pk})
        await replies.start_reply(reply, prompt)

    async def sync(self, data):
        """Bring a (re)connected page up to date: messages it lacks, and live snapshots."""
        since = data.get("since")
        since = since if isinstance(since, int) and not isinstance(since, bool) else 0
        shown = data.get("shown")
        shown = [i for i in shown[-1000:] if type(i) is int] if isinstance(shown, list) else []
        await sweep_orphans(self.conversation.pk)
        newer, last_finished, streaming, gone = await load_sync_state(
            self.conversation.pk, since, shown
        )
        # Messages deleted while the page was away (a reply regenerated in another tab).
        if gone:
            await self.send("".join(removed_html(message_id) for message_id in gone))
        if newer:
            await self.send(append_messages_html(newer))
        if last_finished is not None:
            await self.send(message_html(last_finished))
        for message_id in streaming:
            await self.request_snapshot(message_id)

    async def request_snapshot(self, message_id: int):
        self.offsets.pop(message_id, None)
        self.awaiting_snapshot.add(message_id)
        await self.channel_layer.group_send(
            replies.control_group_name(self.conversation.pk),
            {"type": "reply.sync", "reply_to": self.channel_name},
        )
        # No answer means the reply's process may be gone: check again once it would be stale.
        if self.orphan_check is None or self.orphan_check.done():
            self.orphan_check = asyncio.create_task(self.check_orphans_later())

    async def check_orphans_later(self):
        await asyncio.sleep(settings.CHAT_ORPHAN_AFTER + settings.CHAT_CHECKPOINT_INTERVAL)
        if not self.awaiting_snapshot:
            return
        if await sweep_orphans(self.conversation.pk):
            for message in await load_messages(self.awaiting_snapshot):
                await self.channel_layer.group_send(
                    self.group,
                    {
                        "type": "reply.finished",
                        "message_id": message.pk,
                        "html": message_html(message),
                    },
                )

    async def notify(self, text: str, level: str = "error", refused: str = ""):
        await self.send(notice_html(text, level, refused))

    # --- events from the channel layer (named after their type) ------------

    async def message_created(self, event):
        self.offsets[event["reply_id"]] = 0
        await self.send(event["html"])

    async def message_resumed(self, event):
        self.offsets[event["reply_id"]] = event["offset"]
        self.awaiting_snapshot.discard(event["reply_id"])
        await self.send(event["html"])

    async def reply_delta(self, event):
        message_id = event["message_id"]
        offset = self.offsets.get(message_id)
        if offset is None:
            # Joined mid-reply without a snapshot yet: ask for one, ignore frames until then.
            if message_id not in self.awaiting_snapshot:
                await self.request_snapshot(message_id)
            return
        if event["end"] <= offset:
            return  # already on the page
        if event["start"] != offset:
            # A frame was lost (or overlaps): start again from a snapshot.
            await self.request_snapshot(message_id)
            return
        self.offsets[message_id] = event["end"]
        await self.send(event["html"])

    async def reply_snapshot(self, event):
        message_id = event["message_id"]
        self.awaiting_snapshot.discard(message_id)
        self.offsets[message_id] = event["offset"]
        await self.send(event["html"])

    async def reply_status(self, event):
        await self.send(event["html"])

    async def reply_finished(self, event):
        self.offsets.pop(event["message_id"], None)
        self.awaiting_snapshot.discard(event["message_id"])
        await self.send(event["html"])


def message_id_of(data) -> int | None:
    try:
        return int(data.get("message_id"))
    except (TypeError, ValueError):
        return None


def removed_html(message_id: int) -> str:
    return f'<div id="turn-{message_id}" hx-swap-oob="delete"></div>'


def max_frame_chars() -> int:
    # Room for the JSON around the longest allowed message (escapes can double it).
    return settings.CHAT_MAX_MESSAGE_CHARS * 2 + 4096


# --- database work, in small named helpers -----------------------------------


@database_sync_to_async
def session_belongs_to(session_key: str | None, user) -> bool:
    """Whether the socket's session still logs in ``user`` (read afresh from the store)."""
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    current = auth.get_user(SimpleNamespace(session=store))
    return current.is_authenticated and current.pk == user.pk


def check_limits(owner_id: int, *, sending: bool) -> None:
    """Per-user limits: messages per minute, replies being written at once."""
    now = timezone.now()
    if sending:
        window = timedelta(minutes=1)
        recent = Message.objects.filter(
            conversation__owner_id=owner_id, role=Message.Role.USER, created_at__gt=now - window
        )
        times = list(
            recent.order_by("-created_at").values_list("created_at", flat=True)[
                : settings.CHAT_MESSAGES_PER_MINUTE
            ]
        )
        if len(times) >= settings.CHAT_MESSAGES_PER_MINUTE:
            wait = max(1, math.ceil((times[-1] + window - now).total_seconds()))
            raise ActionRefused(
                f"You can send {settings.CHAT_MESSAGES_PER_MINUTE} messages a minute. "
                f"Try again in {wait} s."
            )
    writing = Message.objects.streaming().filter(conversation__owner_id=owner_id).count()
    if writing >= settings.CHAT_CONCURRENT_REPLIES:
        raise ActionRefused(
            f"You already have {writing} replies being written, the most at once. "
            "Wait for one to finish (or stop one), then try again."
        )


@database_sync_to_async
def get_conversation(user, conversation_id) -> Conversation | None:
    return Conversation.objects.owned_by(user).filter(pk=conversation_id).first()


@database_sync_to_async
def has_streaming_reply(conversation_id: int) -> bool:
    return Message.objects.filter(conversation_id=conversation_id).streaming().exists()


@database_sync_to_async
def begin_reply(conversation_id: int, content: str, model: str):
    """Store the user's message and the reply's row (status streaming) together.

    The database's one-streaming-reply constraint decides races between tabs
    and processes; the loser stores nothing.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            conversation = Conversation.objects.get(pk=conversation_id)
            check_limits(conversation.owner_id, sending=True)
            sent = Message.objects.create(
                conversation=conversation,
                role=Message.Role.USER,
                content=content,
                status=Message.Status.COMPLETE,
                finished_at=now,
            )
            reply = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model=model,
                checkpoint_at=now,
            )
            conversation.updated_at = now
            fields = ["updated_at"]
            if not conversation.title:
                conversation.title = " ".join(content.split())[:80]
                fields.append("title")
            if not conversation.model:
                conversation.model = model
                fields.append("model")
            conversation.save(update_fields=fields)
            prompt = conversation.prompt()
    except IntegrityError as error:
        raise ReplyInProgress from error
    return sent, reply, prompt


CONTINUE_INSTRUCTION = (
    "Continue your previous reply exactly where it stopped. "
    "Do not repeat anything you already wrote."
)


def latest_reply(conversation_id: int, message_id) -> Message:
    last = Message.objects.filter(conversation_id=conversation_id).order_by("-pk").first()
    if last is None or last.pk != message_id or last.role != Message.Role.ASSISTANT:
        raise ActionRefused("Only the latest reply can be continued or regenerated.")
    if last.is_streaming:
        raise ReplyInProgress
    return last


@database_sync_to_async
def reopen_reply(conversation_id: int, message_id):
    """Put the latest reply back to streaming; the prompt asks the model to carry on."""
    reply = latest_reply(conversation_id, message_id)
    if not reply.can_continue:
        raise ActionRefused("This reply is complete; there is nothing to continue.")
    check_limits(reply.conversation.owner_id, sending=False)
    try:
        with transaction.atomic():
            if not reply.reopen():
                raise ReplyInProgress
    except IntegrityError as error:
        raise ReplyInProgress from error
    # The history leaves out streaming rows, so the text so far is added back here.
    prompt = reply.conversation.prompt()
    prompt.append({"role": "assistant", "content": reply.content})
    prompt.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    return reply, prompt


@database_sync_to_async
def replace_reply(conversation_id: int, message_id, model: str):
    """Delete the latest reply and start a new streaming row for the same history."""
    old = latest_reply(conversation_id, message_id)
    check_limits(old.conversation.owner_id, sending=False)
    try:
        with transaction.atomic():
            deleted, _ = Message.objects.filter(pk=old.pk).exclude(status="streaming").delete()
            if not deleted:
                raise ReplyInProgress
            reply = Message.objects.create(
                conversation_id=conversation_id,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model=model,
                checkpoint_at=timezone.now(),
            )
            prompt = reply.conversation.prompt()
    except IntegrityError as error:
        raise ReplyInProgress from error
    return old.pk, reply, prompt


@database_sync_to_async
def sweep_orphans(conversation_id: int) -> int:
    return replies.sweep_orphans(conversation_id)


@database_sync_to_async
def load_messages(ids) -> list[Message]:
    return list(Message.objects.filter(pk__in=list(ids)))


@database_sync_to_async
def load_sync_state(conversation_id: int, since: int, shown: list[int]):
    messages = Message.objects.filter(conversation_id=conversation_id)
    newer = list(messages.filter(pk__gt=since))
    last = messages.filter(pk__lte=since).order_by("-pk").first()
    last_finished = last if last is not None and not last.is_streaming else None
    streaming = list(messages.streaming().values_list("pk", flat=True))
    still_there = set(messages.filter(pk__in=shown).values_list("pk", flat=True))
    gone = [message_id for message_id in shown if message_id not in still_there]
    return newer, last_finished, streaming, gone
