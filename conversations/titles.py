"""Titles the model writes for a conversation, after its first reply.

Until then, and whenever the model cannot, a conversation is named by the first
words of its first message (``Conversation.send``). Once its first reply is
complete, the reply task calls :func:`after_reply`, which starts a task of its own
that no reply waits for. It counts as one of the owner's upstream requests a
minute (over the limit, no title is asked for), asks the reply's model for a
short title in one request answered whole (``upstream.complete_chat``), cleans
the answer (:func:`clean_title`), stores it unless the title changed meanwhile
(the user renamed it), and shows it in the heading and the list of every open
page of the conversation (``ConversationRetitled``). Whatever goes wrong, the
first words stay and nobody is told: a title is a nicety, not a reply.
"""

import asyncio
import logging
import re
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import upstream
from .events import ConversationRetitled, sockets_group
from .models import Conversation, Message, UpstreamRequest
from .rendering import retitled_html
from .runtime import runtime

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Write a short title (at most 6 words) for this conversation. Reply with the title only."
)
# The request ends with a user message: a request that ends with the assistant's reply is
# carried on as that reply by some servers (Ollama, llama.cpp) instead of being answered.
ASK = "Write the title now: at most 6 words, and nothing else."
MAX_INPUT_CHARS = 2000  # of the first message, and of the reply, in the request
MAX_TOKENS = 24
TIMEOUT = 15.0  # seconds for the whole request
MAX_TITLE_CHARS = 80  # as the first words
# A server that streams the title anyway, past max_tokens, is read this far: the title is
# the answer's first line.
MAX_ANSWER_CHARS = 4 * MAX_TITLE_CHARS

# The title requests under way: a task only the loop refers to may be garbage-collected.
tasks: set[asyncio.Task] = set()


def after_reply(message: Message, prompt: list[dict]) -> None:
    """The reply task's hook, once the final element of ``message`` is out: a complete
    reply to a conversation's first message (``prompt``, what its request carried) may
    earn its conversation a title. Starts a task and returns; never raises."""
    try:
        if not settings.CHAT_GENERATE_TITLES or message.status != Message.Status.COMPLETE:
            return
        first = first_message(prompt)
        if first is None:
            return  # not the first exchange: the conversation has its title by now
        task = asyncio.create_task(
            _write_title_logged(
                message.conversation_id, first, message.content, message.model, message.endpoint_id
            ),
            name=f"title-{message.conversation_id}",
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    except Exception:
        log.exception("could not start the title of conversation %s", message.conversation_id)


async def _write_title_logged(
    conversation_id: int, first: str, reply: str, model: str, endpoint_id: int | None = None
) -> None:
    try:
        await write_title(conversation_id, first, reply, model, endpoint_id)
    except Exception:
        log.exception("writing the title of conversation %s failed", conversation_id)


async def write_title(
    conversation_id: int, first: str, reply: str, model: str, endpoint_id: int | None = None
) -> str | None:
    """Ask ``model`` (of the endpoint ``endpoint_id``, None for the default server) for
    the title of a conversation whose first message is ``first`` and first reply
    ``reply``; the title stored and shown, or None (the first words stay)."""
    request = await database_sync_to_async(_prepare)(conversation_id, first, reply)
    if request is None:
        return None
    server = await runtime.server(endpoint_id)
    if server is None:  # its endpoint is no longer offered
        return None
    try:
        answer = await upstream.complete_chat(
            server.base_url,
            client=runtime.http(),
            model=model,
            messages=request.messages,
            api_key=server.api_key,
            time_limit=TIMEOUT,
            extra={"max_tokens": MAX_TOKENS},
            max_chars=MAX_ANSWER_CHARS,
        )
    except upstream.UpstreamError as error:
        log.info("conversation %s keeps its first words as title: %s", conversation_id, error)
        return None
    title = clean_title(answer)
    if not title:
        log.info("conversation %s keeps its first words as title: no title came", conversation_id)
        return None
    conversation = await database_sync_to_async(_store)(conversation_id, request.first_words, title)
    if conversation is None:
        return None  # renamed (or deleted) meanwhile
    event = ConversationRetitled(retitled_html(conversation))
    await get_channel_layer().group_send(sockets_group(conversation_id), event.as_message())
    return title


@dataclass(frozen=True, slots=True)
class TitleRequest:
    first_words: str  # the title it replaces, unless that changed meanwhile
    messages: list[dict]


def _prepare(conversation_id: int, first: str, reply: str) -> TitleRequest | None:
    """The request for the title, admitted against the owner's limit; None when the
    conversation needs none (or it would be over the limit)."""
    row = (
        Conversation.objects.filter(pk=conversation_id, title_generated=False)
        .values_list("title", "owner_id")
        .first()
    )
    if row is None:
        return None  # gone, or titled already
    title, owner_id = row
    words = first_words(first)
    if title != words:
        return None  # named by someone, not by its first words
    if UpstreamRequest.record(owner_id):  # seconds to wait: over the limit
        log.info("conversation %s keeps its first words as title: over the limit", conversation_id)
        return None
    return TitleRequest(words, title_messages(first, reply))


def _store(conversation_id: int, first_words: str, title: str) -> Conversation | None:
    """Store ``title`` if the conversation is still named by ``first_words`` (one UPDATE)."""
    stored = Conversation.objects.filter(
        pk=conversation_id, title=first_words, title_generated=False
    ).update(title=title, title_generated=True)
    return Conversation.objects.filter(pk=conversation_id).first() if stored else None


# --- pure functions ------------------------------------------------------------------------


def first_words(content: str) -> str:
    """The title a first message gives its conversation (as ``Conversation.send`` sets it)."""
    return " ".join(content.split())[:MAX_TITLE_CHARS]


def first_message(prompt: list[dict]) -> str | None:
    """The text of the first message, if ``prompt`` answers a conversation's first message
    (its only user message; a continued reply carries its own text after it), else None."""
    users = [m for m in prompt if m.get("role") == "user"]
    if len(users) != 1:
        return None
    content = users[0].get("content")
    return content if isinstance(content, str) else None


def title_messages(first_message: str, reply: str) -> list[dict]:
    """The messages of a title request: the instruction, the first exchange, the ask."""
    return [
        {"role": "system", "content": INSTRUCTION},
        {"role": "user", "content": _cut(first_message)},
        {"role": "assistant", "content": _cut(reply)},
        {"role": "user", "content": ASK},
    ]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_INPUT_CHARS else text[:MAX_INPUT_CHARS] + "…"


_TAGS = "think|thinking|thought|reasoning"
_THINK_BLOCK = re.compile(rf"<({_TAGS})>.*?(?:</\1>|\Z)", re.IGNORECASE | re.DOTALL)
_BEFORE_CLOSING = re.compile(rf"\A.*</(?:{_TAGS})>", re.IGNORECASE | re.DOTALL)
_LINE_MARK = re.compile(r"\A(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)")
_LABEL = re.compile(r"\A(?:suggested\s+)?title\s*[:\uff1a\-\u2013\u2014]\s*", re.IGNORECASE)
_EMPHASIS = re.compile(r"\*\*|`")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
_QUOTES = (
    "\"'*~`\u201c\u201d\u2018\u2019\u201e\u201a\u00ab\u00bb\u2039\u203a\u300c\u300d\u300e\u300f"
)
_TRAILING = ".,;:!-\u2026\u2013\u2014"  # "?" stays: a title may be a question


def clean_title(answer: str) -> str:
    """A model's answer as a title: reasoning dropped, its first line without quotes,
    Markdown, a "Title:" label or trailing punctuation, white space folded, at most
    MAX_TITLE_CHARS characters (cut at a word). "" when nothing is left."""
    text = _THINK_BLOCK.sub("\n", answer)
    text = _BEFORE_CLOSING.sub("", text)  # a closing tag alone: what came before was thinking
    line = next((line for line in text.splitlines() if line.strip(_QUOTES + " \t")), "")
    line = _CONTROL.sub(" ", line)
    previous = None
    while line != previous:
        previous = line
        line = _LINE_MARK.sub("", line.strip())
        line = _EMPHASIS.sub("", line)
        line = _LABEL.sub("", line.strip(_QUOTES + " \t"))
        line = line.rstrip(_TRAILING + " \t")
    title = " ".join(line.split())
    if len(title) > MAX_TITLE_CHARS:
        cut = title[: MAX_TITLE_CHARS + 1]
        space = cut.rfind(" ")
        title = cut[:space] if space > MAX_TITLE_CHARS // 2 else cut[:MAX_TITLE_CHARS]
        title = title.rstrip(_TRAILING + " ")
    return title
