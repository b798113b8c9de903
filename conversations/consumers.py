"""The websocket transport of a conversation page: frames in, HTML fragments out.

It parses and authorizes each frame and calls the domain (``Conversation.send``,
``regenerate``, ``resume``) and ``replies.start_reply``; it never streams inside
``receive``. Outgoing, it forwards the reply task's events to its socket, using
their offsets so that its page gets every character exactly once, however late
it joined.
"""

import asyncio
import contextlib
import json
import logging
from importlib import import_module
from types import SimpleNamespace

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib import auth

from . import replies
from .events import (
    TO_SOCKETS,
    BranchSwitched,
    DecideToolCall,
    ReplyDelta,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    ReplyStatus,
    ReplyTools,
    SiteClosing,
    StopReply,
    SyncReply,
    parse,
    reply_group,
    sockets_group,
)
from .forms import ConversationSettingsForm
from .models import ActionRefused, Conversation, Message
from .page import (
    CLOSE_GOING_AWAY,
    CLOSE_LOGGED_OUT,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_MANY_SOCKETS,
    max_frame_chars,
)
from .rendering import (
    added_frames,
    created_html,
    message_html,
    notice_html,
    removed_html,
    switched_frames,
)
from .runtime import TokenBucket, runtime

log = logging.getLogger(__name__)


class LoggedOut(Exception):
    """The socket's session no longer logs its user in (read afresh)."""


class FrameRefused(Exception):
    """A frame that cannot be read; its text is shown to the user."""

    def __init__(self, message: str, refused: str = ""):
        super().__init__(message)
        self.refused = refused


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_LOGGED_OUT)
            return
        self.user = user
        self.session_key = self.scope["session"].session_key
        # No id: a new conversation, stored by its first message (start_conversation).
        conversation_id = self.scope["url_route"]["kwargs"].get("conversation_id")
        self.conversation = None
        if conversation_id is not None:
            self.conversation = await get_conversation(user, conversation_id)
            if self.conversation is None:
                await self.accept()
                await self.close(code=CLOSE_NOT_FOUND)
                return
        if not runtime.socket_opened(self.channel_name, user.pk):
            await self.accept()
            await self.close(code=CLOSE_TOO_MANY_SOCKETS)
            return
        rate = settings.CHAT_SOCKET_ACTIONS_PER_SECOND
        self.frame_budget = TokenBucket(rate, burst=max(1, round(rate * 4)))
        self.limit_noticed = float("-inf")
        # Per streaming message: the offset this socket's page has reached.
        # A message with no entry waits for a snapshot before it gets frames.
        self.offsets: dict[int, int] = {}
        self.awaiting_snapshot: set[int] = set()
        self.orphan_check: asyncio.Task | None = None
        self.syncing: asyncio.Task | None = None
        self.creating: asyncio.Task | None = None  # a new page's created frame, on its way
        self.reply_forwarded: tuple[int, asyncio.Event] | None = None  # (its reply, sent)
        self.sync_wanted: dict | None = None
        self.group = None
        if self.conversation is not None:
            await self.join(self.conversation)
        await self.accept()

    async def join(self, conversation) -> None:
        self.conversation = conversation
        self.group = sockets_group(conversation.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code):
        runtime.socket_closed(self.channel_name)
        tasks = [getattr(self, name, None) for name in ("orphan_check", "syncing", "creating")]
        for task in tasks:
            if task is not None:
                task.cancel()
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message):
        # Reply events only forward HTML to the socket. Channels prepares the database
        # connection before every handler; these need none, and would otherwise queue
        # each frame behind the database thread.
        event = parse(message, TO_SOCKETS)
        if event is None:
            await super().dispatch(message)
        else:
            await self.after_sync()  # the page sees events in the order they happened
            await getattr(self, get_handler_name(message))(event)

    async def after_sync(self) -> None:
        if getattr(self, "syncing", None) is not None:
            await asyncio.wait([self.syncing])

    # --- frames from the page ----------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if not self.frame_budget.take():
            # One socket must not slow the site for others; one notice a second at most.
            now = asyncio.get_running_loop().time()
            if now - self.limit_noticed >= 1:
                self.limit_noticed = now
                await self.notify("Too many requests on this connection: slow down a little.")
            return
        try:
            if text_data is None:
                raise FrameRefused("This connection takes JSON text frames only.")
            data = await self.decode_json(text_data)
        except FrameRefused as refusal:
            await self.notify(str(refusal), refused=refusal.refused)
            return
        await self.receive_json(data)

    @classmethod
    async def decode_json(cls, text_data):
        if len(text_data) > max_frame_chars():
            limit = settings.CHAT_MAX_MESSAGE_CHARS
            raise FrameRefused(
                f"That message is too long: the limit is {limit:,} characters.", refused="send"
            )
        try:
            data = json.loads(text_data)
        except (ValueError, RecursionError) as error:
            raise FrameRefused(
                "The server could not read that request (it is not valid JSON)."
            ) from error
        return data if isinstance(data, dict) else {}

    async def receive_json(self, content, **kwargs):
        action = content.get("action")
        handler = self.ACTIONS.get(action) if isinstance(action, str) else None
        try:
            if handler is None:
                await self.notify(f"Unknown action {ascii(action)[:40]}.")
            elif self.conversation is None and handler is not ConversationConsumer.send_message:
                if handler is not ConversationConsumer.sync:  # a new page has nothing to sync
                    await self.notify("Send a first message: this conversation is empty.")
            elif handler is ConversationConsumer.sync:
                await self.sync(content)  # coalesced: checked and run by its own task
            else:
                await self.after_sync()  # the page's actions keep their order
                async with runtime.turn(self.user.pk):
                    # Actions that start a reply check the session in their own trip to
                    # the database thread (``start``): one trip from a frame to the request.
                    if handler in self.STARTS_REPLIES or await self.still_logged_in():
                        await handler(self, content)
        except Exception:
            await self.failed(action)

    async def failed(self, action) -> None:
        # A bug or an outage must not close the socket (1011): say so, keep it usable.
        conversation_id = self.conversation.pk if self.conversation is not None else "(new)"
        log.exception(
            "the %s action failed on conversation %s", ascii(action)[:40], conversation_id
        )
        await self.notify(
            "The server could not do that just now. Nothing you sent before was lost; "
            "try again in a moment.",
            refused="send" if action == "send" else "",
        )

    async def still_logged_in(self) -> bool:
        """Whether the socket's session still logs its user in, read afresh; else it closes."""
        if await database_sync_to_async(self.logged_in)():
            return True
        await self.logged_out()
        return False

    async def logged_out(self) -> None:
        # Logged out (or the password changed) elsewhere: this socket's rights end too.
        await self.notify("You have been logged out. Reload the page to log in again.")
        await self.close(code=CLOSE_LOGGED_OUT)

    def logged_in(self, session=None) -> bool:
        """(Database thread.) Whether the socket's session, read afresh from its store (or
        ``session``, just read), still logs in the socket's user."""
        if not self.session_key:
            return False
        if session is None:
            session = import_module(settings.SESSION_ENGINE).SessionStore(self.session_key)
        current = auth.get_user(SimpleNamespace(session=session))
        return current.is_authenticated and current.pk == self.user.pk

    async def send_message(self, data):
        if self.conversation is None:
            await self.start_conversation(data.get("content"))
            return
        model = self.conversation.model or await runtime.default_model()
        await self.start(self.conversation.send, data.get("content"), model, refused="send")

    async def start_conversation(self, content):
        """The first message of a new page: store the conversation with it, make the page
        the conversation's, then start the reply (as ``send`` does)."""
        default_model = await runtime.default_model()
        started = await self.stored(
            self.stored_conversation, content, default_model, refused="send"
        )
        if started is None:
            return
        await self.join(started.reply.conversation)
        reply = await replies.start_reply(started)  # the request leaves, then the turn shows
        forwarded = asyncio.Event()
        self.reply_forwarded = (reply.message.pk, forwarded)
        self.creating = asyncio.ensure_future(self.send_created(forwarded))

    async def send_created(self, forwarded: asyncio.Event) -> None:
        """The page's heading, list link and address, once this socket has passed on the
        reply's first frame (``forwarded``; or after CREATED_AFTER seconds): a fast first
        token does not wait for them to render."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(forwarded.wait(), CREATED_AFTER)
        for _ in range(3):  # Twisted writes that frame to the socket on the loop's next turns
            await asyncio.sleep(0)
        try:
            groups = await runtime.model_groups()
            form = ConversationSettingsForm(instance=self.conversation, groups=groups)
            csrf = self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
            await self.send(created_html(self.conversation, form, csrf))
        except Exception:  # the reply goes on; the page keeps its /c/new/ address
            log.exception("the created frame of conversation %s failed", self.conversation.pk)

    def stored_conversation(self, content, default_model: str):
        # The settings chosen on the page wait in the session, read afresh: the socket's
        # copy was loaded when it opened, before the Settings form may have saved them.
        # The same read checks that the session still logs the user in.
        session = import_module(settings.SESSION_ENGINE).SessionStore(self.session_key)
        if not self.logged_in(session):
            raise LoggedOut
        started = Conversation.start(
            self.user, session.get(Conversation.DRAFT), content, default_model
        )
        if Conversation.DRAFT in session:
            del session[Conversation.DRAFT]  # the next new page starts afresh
            session.save()
        return started

    async def continue_reply(self, data):
        await self.start(self.conversation.resume, message_id_of(data))

    async def regenerate_reply(self, data):
        model = self.conversation.model or await runtime.default_model()
        await self.start(self.conversation.regenerate, message_id_of(data), model)

    async def edit_message(self, data):
        model = self.conversation.model or await runtime.default_model()
        content = data.get("content")
        await self.start(self.conversation.edit, message_id_of(data), content, model)

    async def switch_version(self, data):
        """Show another version of a turn, on every page of the conversation."""
        try:
            switch = await database_sync_to_async(self.conversation.switch_version)(
                message_id_of(data)
            )
        except ActionRefused as refusal:
            await self.notify(str(refusal), level="info")
            return
        event = BranchSwitched(switched_frames(switch))
        await self.channel_layer.group_send(self.group, event.as_message())

    async def start(self, action, *args, refused: str = ""):
        """Store the reply's row by ``action`` (a Conversation method), then start writing it.
        The session is checked in the same trip to the database thread."""
        started = await self.stored(self.logged_in_then, action, *args, refused=refused)
        if started is not None:
            await replies.start_reply(started)

    async def stored(self, store, *args, refused: str):
        """``store(*args)`` in the database thread: its StartedReply, or None once the page
        was told why not (a refusal, or the session logged out)."""
        try:
            return await database_sync_to_async(store)(*args)
        except LoggedOut:
            await self.logged_out()
        except ActionRefused as refusal:
            await self.notify(str(refusal), refused=refused)
        return None

    def logged_in_then(self, action, *args):
        if not self.logged_in():
            raise LoggedOut
        return action(*args)

    async def stop_reply(self, data):
        if await self.end_orphans():
            return  # its process is gone: it was ended as interrupted
        if not await has_streaming_reply(self.conversation.pk):
            await self.notify("There is no reply to stop.", level="info")
            return
        await self.channel_layer.group_send(
            reply_group(self.conversation.pk), StopReply().as_message()
        )

    async def decide_tool_call(self, data):
        """Allow or Deny a tool call that waits for the user (the first answer counts)."""
        message_id, call_id, allow = message_id_of(data), data.get("call_id"), data.get("allow")
        if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
            call_id = None
        allow = {"yes": True, "no": False, True: True, False: False}.get(allow)
        if message_id is None or call_id is None or allow is None:
            await self.notify("That tool call decision could not be read.")
            return
        if not await has_streaming_reply(self.conversation.pk, message_id):
            await self.notify("That reply has ended; its tool call no longer waits.", level="info")
            return
        event = DecideToolCall(message_id, call_id, allow)
        await self.channel_layer.group_send(reply_group(self.conversation.pk), event.as_message())

    async def sync(self, data):
        """Bring a (re)connected page up to date: messages it lacks, and live snapshots.

        One sync runs at a time per socket; those asked for meanwhile are coalesced
        into one more, with the latest frame's figures.
        """
        self.sync_wanted = data
        if self.syncing is None:
            self.syncing = asyncio.ensure_future(self.sync_until_current())

    async def sync_until_current(self):
        try:
            while self.sync_wanted is not None:
                # The expensive action: CHAT_SYNCS_PER_SECOND per user, over all sockets.
                while (wait := runtime.sync_delay(self.user.pk)) > 0:  # noqa: ASYNC110 (time refills it)
                    await asyncio.sleep(wait)
                data, self.sync_wanted = self.sync_wanted, None
                try:
                    async with runtime.turn(self.user.pk):
                        if not await self.still_logged_in():
                            return
                        await self.sync_once(data)
                except Exception:
                    await self.failed("sync")
        finally:
            self.syncing = None

    async def sync_once(self, data):
        since = data.get("since")
        since = min(since, MAX_ID) if type(since) is int else 0
        shown = data.get("shown")
        shown = ids_in(shown) if isinstance(shown, list) else []
        state = await database_sync_to_async(self.conversation.sync_state)(since, shown)
        # A reply still marked streaming may be an orphan of a stopped process: end it first.
        if state.streaming and await database_sync_to_async(runtime.sweep_orphans)(
            self.conversation.pk
        ):
            state = await database_sync_to_async(self.conversation.sync_state)(since, shown)
        # Messages gone while the page was away (a reply regenerated in another tab).
        if state.gone:
            await self.send(removed_html(state.gone))
        for frame in added_frames(state.newer):
            await self.send(frame)
        if state.last_finished is not None:
            await self.send(message_html(state.last_finished))
        for message_id in state.streaming:
            await self.request_snapshot(message_id)

    ACTIONS = {
        "send": send_message,
        "stop": stop_reply,
        "sync": sync,
        "continue": continue_reply,
        "regenerate": regenerate_reply,
        "edit": edit_message,
        "switch": switch_version,
        "decide": decide_tool_call,
    }
    STARTS_REPLIES = {send_message, continue_reply, regenerate_reply, edit_message}

    async def request_snapshot(self, message_id: int):
        self.offsets.pop(message_id, None)
        self.awaiting_snapshot.add(message_id)
        await self.channel_layer.group_send(
            reply_group(self.conversation.pk), SyncReply(self.channel_name).as_message()
        )
        # No answer means the reply's process may be gone: look again once it would be stale.
        if self.orphan_check is None or self.orphan_check.done():
            self.orphan_check = asyncio.ensure_future(self.end_orphans_later())

    async def end_orphans_later(self):
        await asyncio.sleep(settings.CHAT_ORPHAN_AFTER + settings.CHAT_CHECKPOINT_INTERVAL)
        if self.awaiting_snapshot:
            await self.end_orphans()

    async def end_orphans(self) -> bool:
        """End this conversation's replies whose process is gone; show every page."""
        ended = await database_sync_to_async(runtime.sweep_orphans)(self.conversation.pk)
        for message in await load_messages(ended):
            finished = ReplyFinished(message.pk, message_html(message))
            await self.channel_layer.group_send(self.group, finished.as_message())
        return bool(ended)

    async def notify(self, text: str, level: str = "error", refused: str = ""):
        await self.send(notice_html(text, level, refused))

    # --- events from the reply task (named after their type) ---------------------------

    async def reply_started(self, event: ReplyStarted):
        self.offsets[event.message_id] = event.offset
        self.awaiting_snapshot.discard(event.message_id)
        await self.send(event.html)

    async def reply_delta(self, event: ReplyDelta):
        offset = self.offsets.get(event.message_id)
        if offset is None:
            # Joined mid-reply without a snapshot yet: ask for one, ignore frames until then.
            if event.message_id not in self.awaiting_snapshot:
                await self.request_snapshot(event.message_id)
            return
        if event.end <= offset:
            return  # already on the page
        if event.start != offset:
            # A frame was lost (or overlaps): start again from a snapshot.
            await self.request_snapshot(event.message_id)
            return
        self.offsets[event.message_id] = event.end
        await self.send(event.html)
        self.forwarded(event.message_id)

    async def reply_snapshot(self, event: ReplySnapshot):
        self.awaiting_snapshot.discard(event.message_id)
        self.offsets[event.message_id] = event.offset
        await self.send(event.html)

    async def reply_status(self, event: ReplyStatus):
        await self.send(event.html)

    async def reply_tools(self, event: ReplyTools):
        await self.send(event.html)

    async def reply_finished(self, event: ReplyFinished):
        self.offsets.pop(event.message_id, None)
        self.awaiting_snapshot.discard(event.message_id)
        await self.send(event.html)
        self.forwarded(event.message_id)

    def forwarded(self, message_id: int) -> None:
        """A frame of ``message_id`` went to the page: a created frame waiting for it goes."""
        if self.reply_forwarded is not None and self.reply_forwarded[0] == message_id:
            self.reply_forwarded[1].set()
            self.reply_forwarded = None

    async def conversation_retitled(self, event):  # events.ConversationRetitled
        await self.send(event.html)

    async def branch_switched(self, event: BranchSwitched):
        for frame in event.frames:
            await self.send(frame)

    async def site_closing(self, event: SiteClosing):
        await self.close(code=CLOSE_GOING_AWAY)


MAX_ID = 2**63 - 1  # the database's largest key
CREATED_AFTER = 0.25  # seconds a new page's created frame waits for the reply's first one


def message_id_of(data) -> int | None:
    try:
        message_id = int(data.get("message_id"))
    except (TypeError, ValueError, OverflowError):
        return None
    return message_id if 0 < message_id <= MAX_ID else None


def ids_in(value) -> list[int]:
    return [i for i in value[-1000:] if type(i) is int and 0 < i <= MAX_ID]


# --- reads, in small named helpers ---------------------------------------------------------


@database_sync_to_async
def get_conversation(user, conversation_id) -> Conversation | None:
    return Conversation.objects.owned_by(user).filter(pk=conversation_id).first()


@database_sync_to_async
def has_streaming_reply(conversation_id: int, message_id: int | None = None) -> bool:
    replies = Message.objects.filter(conversation_id=conversation_id).streaming()
    if message_id is not None:
        replies = replies.filter(pk=message_id)
    return replies.exists()


@database_sync_to_async
def load_messages(ids) -> list[Message]:
    return list(Message.objects.filter(pk__in=list(ids)))
