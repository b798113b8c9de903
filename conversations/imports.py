"""Importing conversations from a file: ChatGPT's data export and this site's own export.

``read_file`` parses and checks a whole file into plain data (``ImportedConversation``),
refusing it with ``ImportRefused`` and a message for its reader if anything in it is
wrong; only then does ``store`` write all of it in one transaction, so a bad file or an
error midway stores nothing. ``start`` runs both on a thread of this process (one per
file), recording progress on its ``ConversationImport`` row for the page to poll.

The formats:

- ChatGPT's ``conversations.json``: a list of conversations, each with a ``mapping`` of
  nodes ``{id, parent, children, message}``. System, tool and hidden messages and empty
  ones are left out, and the messages under them attach to their nearest kept ancestor,
  so the tree (regenerated replies, edited messages) is kept. The branch shown is the path
  to ``current_node``.
- This site's export (``Conversation.export()``, or the admin's JSON export): messages
  with ``id`` and ``parent_id``, and the ``branch`` shown.

Either may be one conversation, a list of them, or ``{"conversations": [...]}``.

Messages are stored as they are, however long: ``CHAT_MAX_MESSAGE_CHARS`` limits what
someone types into the composer, and replies already have no limit. Only the file's size
is limited (``CHAT_IMPORT_MAX_BYTES``).
"""

import contextlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .models import UNSTORABLE, Conversation, ConversationImport, Message

log = logging.getLogger(__name__)

ROLES = (Message.Role.USER, Message.Role.ASSISTANT)
# What a reply imported from this site may have ended as; a reply exported while it was
# being written was cut there.
FINAL = {s.value for s in Message.Status} - {Message.Status.STREAMING}
PLACEHOLDERS = {"image_asset_pointer": "[image]", "audio_asset_pointer": "[audio]"}
STOPPED = "The site stopped during the import."
FAILED = "Something went wrong on the site while importing (it is in the site's log)."
BATCH = 1000  # rows per INSERT or UPDATE while storing


class ImportRefused(Exception):
    """The file cannot be imported; the text says why, for the person who sent it."""


class ImportStopped(Exception):
    """The process is stopping: the import is abandoned and its transaction rolled back."""


@dataclass
class ImportedMessage:
    key: str  # its id in the file
    parent: str | None  # its parent's key, after left-out messages are skipped over
    role: str
    content: str
    created_at: datetime
    chosen_at: datetime
    fields: dict = field(default_factory=dict)  # the other Message fields it sets


@dataclass
class ImportedConversation:
    title: str
    created_at: datetime
    updated_at: datetime
    model: str = ""
    system_prompt: str = ""
    # Depth first, each turn's versions in order (the order their ids will have).
    messages: list[ImportedMessage] = field(default_factory=list)


# --- reading a file ----------------------------------------------------------------------


def read_file(path, progress=lambda done, total: None, now=None) -> list[ImportedConversation]:
    """Every conversation of the file at ``path``, checked; ``progress(done, total)`` is
    called as they are."""
    if not os.path.getsize(path):
        raise ImportRefused("The file is empty.")
    try:
        with open(path, "rb") as file:
            document = json.load(file)
    except UnicodeDecodeError as error:
        raise ImportRefused("The file is not text (UTF-8 JSON was expected).") from error
    except (json.JSONDecodeError, RecursionError) as error:
        raise ImportRefused(f"The file is not valid JSON ({_json_error(error)}).") from error
    return read_document(document, progress, now)


def read_document(document, progress=lambda done, total: None, now=None):
    """The conversations of a parsed JSON document, checked."""
    now = now or timezone.now()
    if isinstance(document, dict) and isinstance(document.get("conversations"), list):
        document = document["conversations"]  # the admin's export
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise ImportRefused(
            "The file holds neither a conversation nor a list of them: expected ChatGPT's "
            "conversations.json or a conversation exported from this site."
        )
    if not document:
        raise ImportRefused("The file holds no conversations.")
    total, imported = len(document), []
    progress(0, total)
    for at in range(total):
        item, document[at] = document[at], None  # let what is read go as it is read
        imported.append(read_conversation(item, at + 1, now))
        progress(at + 1, total)
    return imported


def read_conversation(item, number: int, now) -> ImportedConversation:
    if not isinstance(item, dict):
        raise ImportRefused(f"Conversation {number} is not a JSON object.")
    title = item.get("title")
    where = f"Conversation {number}" + (f" (“{title[:60]}”)" if isinstance(title, str) else "")
    if "mapping" in item:
        return _chatgpt_conversation(item, where, now)
    if "messages" in item:
        return _site_conversation(item, where, now)
    raise ImportRefused(
        f"{where} is neither a ChatGPT conversation (it has no “mapping”) nor one exported "
        "from this site (it has no “messages”)."
    )


def _chatgpt_conversation(item, where: str, now) -> ImportedConversation:
    mapping = item["mapping"]
    if not isinstance(mapping, dict):
        raise ImportRefused(f"{where}: its “mapping” is not an object.")
    nodes, parents, order = {}, {}, {}
    for key, node in mapping.items():
        if not isinstance(node, dict):
            raise ImportRefused(f"{where}: node {key} of its mapping is not an object.")
        parent = node.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise ImportRefused(f"{where}: node {key} has a parent that is not an id.")
        parents[key] = parent
        children = node.get("children") or []
        if not isinstance(children, list):
            raise ImportRefused(f"{where}: node {key} has “children” that are not a list.")
        for at, child in enumerate(children):
            if isinstance(child, str):
                order.setdefault(child, at)
        nodes[key] = _chatgpt_message(node.get("message"), f"{where}, node {key}")
    default_time = _epoch(item.get("create_time"), where) or now
    for message in nodes.values():
        if message is not None and message["created_at"] is None:
            message["created_at"] = default_time
    current = item.get("current_node")
    shown = _ancestors(current, parents) if isinstance(current, str) else set()
    messages = _tree(
        where,
        parents,
        kept={k for k, m in nodes.items() if m is not None},
        # Versions in the order of their parent's children (the order they were written).
        sort_key=lambda k: (order.get(k, math.inf), _time_key(nodes[k])),
    )
    imported = [
        ImportedMessage(
            key=key,
            parent=parent,
            role=nodes[key]["role"],
            content=nodes[key]["content"],
            created_at=nodes[key]["created_at"],
            chosen_at=nodes[key]["created_at"],
            fields={"model": nodes[key]["model"]},
        )
        for key, parent in messages
    ]
    return _conversation(
        imported,
        shown,
        now,
        title=_text(item.get("title"), f"{where}: title"),
        created_at=_epoch(item.get("create_time"), where),
        updated_at=_epoch(item.get("update_time"), where),
    )


def _chatgpt_message(message, where: str) -> dict | None:
    """The text and role of a node's message, or None for one that is not imported."""
    if message is None:
        return None
    if not isinstance(message, dict):
        raise ImportRefused(f"{where}: its message is not an object.")
    author, content = message.get("author") or {}, message.get("content") or {}
    metadata = message.get("metadata") or {}
    if not all(isinstance(part, dict) for part in (author, content, metadata)):
        raise ImportRefused(f"{where}: its author, content or metadata is not an object.")
    created_at = _epoch(message.get("create_time"), where)
    role = author.get("role")
    if role not in ROLES or metadata.get("is_visually_hidden_from_conversation"):
        return None
    if message.get("recipient", "all") != "all":  # a call to one of ChatGPT's tools
        return None
    if content.get("content_type") not in ("text", "multimodal_text"):
        return None  # code, browsing, reasoning summaries: ChatGPT's tools and thoughts
    parts = content.get("parts") or []
    if not isinstance(parts, list):
        raise ImportRefused(f"{where}: its content's “parts” is not a list.")
    text = "\n".join(_part_text(part) for part in parts if part is not None).strip()
    if not text:
        return None
    model = metadata.get("model_slug")
    return {
        "role": role,
        "content": UNSTORABLE.sub("\ufffd", text),
        "created_at": created_at,
        "model": model[:200] if isinstance(model, str) and role == "assistant" else "",
    }


def _part_text(part) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        if isinstance(part.get("text"), str):  # an audio transcription, say
            return part["text"]
        return PLACEHOLDERS.get(part.get("content_type"), "[attachment]")
    return "[attachment]"


def _site_conversation(item, where: str, now) -> ImportedConversation:
    rows = item["messages"]
    if not isinstance(rows, list):
        raise ImportRefused(f"{where}: its “messages” is not a list.")
    nodes, parents = {}, {}
    for at, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ImportRefused(f"{where}: message {at + 1} is not an object.")
        key = row.get("id")
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise ImportRefused(f"{where}: message {at + 1} has no id.")
        key, parent = str(key), row.get("parent_id")
        if key in nodes:
            raise ImportRefused(f"{where}: two messages have the id {key}.")
        if isinstance(parent, bool) or not isinstance(parent, int | str | None):
            raise ImportRefused(f"{where}: message {key} has a parent that is not an id.")
        parents[key] = None if parent is None else str(parent)
        nodes[key] = _site_message(row, f"{where}, message {key}", now)
    branch = item.get("branch")
    shown = {str(k) for k in branch} if isinstance(branch, list) else set()
    messages = _tree(
        where,
        parents,
        kept={k for k, m in nodes.items() if m is not None},
        sort_key=_id_key,  # the order they were made on the site
    )
    imported = [ImportedMessage(key=key, parent=parent, **nodes[key]) for key, parent in messages]
    return _conversation(
        imported,
        shown,
        now,
        title=_text(item.get("title"), f"{where}: title"),
        created_at=_iso(item.get("created_at"), f"{where}: created_at"),
        updated_at=_iso(item.get("updated_at"), f"{where}: updated_at"),
        model=_text(item.get("model"), f"{where}: model")[:200],
        system_prompt=_text(item.get("system_prompt"), f"{where}: system_prompt"),
    )


def _site_message(row, where: str, now) -> dict | None:
    role = row.get("role")
    if role not in ROLES:
        return None  # the site stores only these; anything else is not a turn
    content = UNSTORABLE.sub("\ufffd", _text(row.get("content"), f"{where}: content"))
    status = row.get("status") or Message.Status.COMPLETE
    if status not in FINAL:
        status = Message.Status.INTERRUPTED
    created_at = _iso(row.get("created_at"), f"{where}: created_at") or now
    fields = {
        "status": status,
        "model": _text(row.get("model"), f"{where}: model")[:200],
        # The endpoint's name only: its id names a server of the site that exported it.
        "endpoint_name": _text(row.get("endpoint_name"), f"{where}: endpoint_name")[:100],
        "reasoning": UNSTORABLE.sub("\ufffd", _text(row.get("reasoning"), f"{where}: reasoning")),
        "finish_reason": _text(row.get("finish_reason"), f"{where}: finish_reason")[:32],
        "error": _text(row.get("error"), f"{where}: error"),
        "reasoning_seconds": _number(row.get("reasoning_seconds"), f"{where}: reasoning_seconds"),
        "tool_rounds": _tool_rounds(row.get("tool_rounds"), len(content), where),
        "tool_calls": _tool_calls(row.get("tool_calls"), where),
        "finished_at": _iso(row.get("finished_at"), f"{where}: finished_at") or created_at,
    }
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "reasoning_tokens"):
        fields[name] = _count(row.get(name), f"{where}: {name}")
    return {
        "role": role,
        "content": content,
        "created_at": created_at,
        "chosen_at": _iso(row.get("chosen_at"), f"{where}: chosen_at") or created_at,
        "fields": fields,
    }


def _tool_rounds(rounds, length: int, where: str):
    if rounds is None:
        return None
    wrong = ImportRefused(f"{where}: its tool rounds are not as this site writes them.")
    if not isinstance(rounds, list):
        raise wrong
    for round_ in rounds:
        if not isinstance(round_, dict) or not isinstance(round_.get("calls"), list):
            raise wrong
        end = round_.get("text_end")
        if isinstance(end, bool) or not isinstance(end, int) or not 0 <= end <= length:
            raise wrong
        for call in round_["calls"]:
            if not isinstance(call, dict):
                raise wrong
            if not all(isinstance(call.get(k), str) for k in ("id", "name", "arguments")):
                raise wrong
            if not isinstance(call.get("result", ""), str):
                raise wrong
    return rounds or None


def _tool_calls(calls, where: str):
    if calls is None:
        return None
    wrong = ImportRefused(f"{where}: its tool calls are not as this site writes them.")
    if not isinstance(calls, list):
        raise wrong
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise wrong
    return calls or None


# --- the tree ----------------------------------------------------------------------------


def _tree(where: str, parents: dict, kept: set, sort_key) -> list[tuple[str, str | None]]:
    """The kept messages, depth first with each turn's versions in ``sort_key`` order, each
    with its nearest kept ancestor (None at the top). Refused if a parent is missing or
    parents go round in a loop."""
    children: dict[str | None, list[str]] = {}
    for key, parent in parents.items():
        if parent is not None and parent not in parents:
            raise ImportRefused(
                f"{where}: message {key} follows message {parent}, which is not in the file."
            )
        children.setdefault(parent, []).append(key)
    ordered, seen = [], set()
    pending = [(key, None) for key in sorted(children.get(None, []), key=sort_key, reverse=True)]
    while pending:
        key, above = pending.pop()
        seen.add(key)
        if key in kept:
            ordered.append((key, above))
            above = key
        below = sorted(children.get(key, []), key=sort_key, reverse=True)
        pending.extend((child, above) for child in below)
    if len(seen) < len(parents):
        looped = sorted(set(parents) - seen)[0]
        raise ImportRefused(
            f"{where}: its messages' parents go round in a loop (message {looped} is in it)."
        )
    return ordered


def _ancestors(key: str, parents: dict) -> set:
    """``key`` and the messages above it (stopping at a loop, which _tree refuses)."""
    found = set()
    while key is not None and key in parents and key not in found:
        found.add(key)
        key = parents[key]
    return found


def _conversation(messages, shown: set, now, *, title, created_at, updated_at, **fields):
    """The conversation of ``messages`` with the branch through ``shown`` chosen: the site
    shows, from each message, the child chosen last, so the shown ones are chosen at the
    moment of the import and the others just before."""
    before = now - timedelta(milliseconds=1)
    for message in messages:
        message.chosen_at = now if message.key in shown else min(message.chosen_at, before)
    times = [m.created_at for m in messages]
    if not title:
        # The first message of the branch shown (of the first branch, if none is named).
        users = [m for m in messages if m.role == Message.Role.USER]
        first = next((m.content for m in users if m.key in shown), "")
        first = first or next((m.content for m in users), "")
        title = " ".join(first.split())[:80]
    created_at = created_at or (min(times) if times else now)
    return ImportedConversation(
        title=" ".join(title.split())[:200],
        created_at=created_at,
        updated_at=updated_at or (max(times) if times else created_at),
        messages=messages,
        **fields,
    )


# --- values ------------------------------------------------------------------------------


def _text(value, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImportRefused(f"{where} is not text.")
    return value


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ImportRefused(f"{where} is not a number.")
    return float(value)


def _count(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ImportRefused(f"{where} is not a count.")
    return value


def _epoch(value, where: str) -> datetime | None:
    """A ChatGPT time: seconds since 1970."""
    seconds = _number(value, f"{where}: a time")
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise ImportRefused(f"{where}: a time is out of range ({value}).") from error


def _iso(value, where: str) -> datetime | None:
    """A time as this site exports it (ISO 8601)."""
    if value is None:
        return None
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise ImportRefused(f"{where} is not a date and time.")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


def _time_key(message: dict | None) -> float:
    return message["created_at"].timestamp() if message else math.inf


def _id_key(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _json_error(error) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    return "nested too deeply"


# --- storing -----------------------------------------------------------------------------


def store(owner_id: int, imported: list[ImportedConversation], stopping=None) -> list[int]:
    """Write the conversations for ``owner_id`` in one transaction; their ids, in order.

    The conversations, then the messages turn by turn (the first messages of every
    conversation, then the second, ...), in batches: one INSERT per thousand messages and
    per turn of the longest conversation.
    ``stopping`` (a threading.Event) abandons it between batches, storing nothing.
    """

    def check():
        if stopping is not None and stopping.is_set():
            raise ImportStopped

    with transaction.atomic():
        conversations = Conversation.objects.bulk_create(
            [
                Conversation(
                    owner_id=owner_id,
                    title=c.title,
                    model=c.model,
                    system_prompt=c.system_prompt,
                    created_at=c.created_at,
                    updated_at=c.updated_at,
                )
                for c in imported
            ],
            batch_size=BATCH,
        )
        # By depth: every message's parent is stored (and has its id) before it.
        levels: dict[int, list] = {}
        for conversation, source in zip(conversations, imported, strict=True):
            depth = {}
            for message in source.messages:  # depth first: parents come before children
                depth[message.key] = 0 if message.parent is None else depth[message.parent] + 1
                values = {
                    "status": Message.Status.COMPLETE,
                    "finished_at": message.created_at,
                    **message.fields,
                }
                row = Message(
                    conversation=conversation,
                    role=message.role,
                    content=message.content,
                    created_at=message.created_at,
                    chosen_at=message.chosen_at,
                    **values,
                )
                levels.setdefault(depth[message.key], []).append((row, message))
        pk_of = {}  # (conversation id, key in the file) -> message id
        for level in sorted(levels):
            rows = levels[level]
            for row, message in rows:
                if message.parent is not None:
                    row.parent_id = pk_of[(row.conversation_id, message.parent)]
            for start in range(0, len(rows), BATCH):
                check()
                Message.objects.bulk_create([row for row, _ in rows[start : start + BATCH]])
            pk_of.update(((row.conversation_id, m.key), row.pk) for row, m in rows)
        check()
    return [c.pk for c in conversations]


# --- running in the background -----------------------------------------------------------


def start(job: ConversationImport, path: str) -> threading.Thread:
    """Import the file at ``path`` (deleted after) on a thread of its own, for ``job``.

    A plain thread works the same under Daphne and under the test client. It lives only as
    long as the process: a stop (SIGTERM) abandons it, and the import fails and stores
    nothing (Runtime.shutdown); after a crash the page calls it failed once its row has
    not moved for CHAT_IMPORT_STALE_AFTER seconds.
    """
    from .runtime import runtime

    stopping = threading.Event()
    thread = threading.Thread(
        target=run, args=(job.pk, path, stopping), name=f"import-{job.pk}", daemon=True
    )
    runtime.imports[job.pk] = (thread, stopping)
    thread.start()
    return thread


def run(job_id: int, path: str, stopping: threading.Event) -> None:
    from .runtime import runtime

    try:
        ConversationImport.objects.filter(pk=job_id).update(
            status=ConversationImport.Status.RUNNING, updated_at=timezone.now()
        )
        owner_id = ConversationImport.objects.values_list("owner_id", flat=True).get(pk=job_id)
        imported = read_file(path, progress=_progress(job_id, stopping))
        ConversationImport.objects.filter(pk=job_id).update(storing=True, updated_at=timezone.now())
        ids = store(owner_id, imported, stopping)
        _end(job_id, ConversationImport.Status.DONE, conversation_ids=ids, done=len(ids))
    except ImportRefused as error:
        _end(job_id, ConversationImport.Status.FAILED, error=str(error))
    except ImportStopped:
        _end(job_id, ConversationImport.Status.FAILED, error=STOPPED)
    except Exception:
        log.exception("import %s failed", job_id)
        _end(job_id, ConversationImport.Status.FAILED, error=FAILED)
    finally:
        runtime.imports.pop(job_id, None)
        with contextlib.suppress(OSError):
            os.unlink(path)
        connection.close()  # this thread's own connection


def _progress(job_id: int, stopping: threading.Event, every: float = 0.25):
    """Record how many conversations are checked, at most every ``every`` seconds."""
    last = [0.0]

    def record(done: int, total: int) -> None:
        if stopping.is_set():
            raise ImportStopped
        if done in (0, total) or time.monotonic() - last[0] >= every:
            last[0] = time.monotonic()
            ConversationImport.objects.filter(pk=job_id).update(
                total=total, done=done, updated_at=timezone.now()
            )

    return record


def _end(job_id: int, status, **fields) -> None:
    now = timezone.now()
    ConversationImport.objects.filter(pk=job_id).update(
        status=status, storing=False, finished_at=now, updated_at=now, **fields
    )


def sweep_if_stale(job: ConversationImport) -> None:
    """Call ``job`` failed if its thread is gone: not running in this process, and its row
    has not moved for CHAT_IMPORT_STALE_AFTER seconds (its process stopped or crashed)."""
    from .runtime import runtime

    if job.is_over or job.pk in runtime.imports:
        return
    if job.updated_at > timezone.now() - timedelta(seconds=settings.CHAT_IMPORT_STALE_AFTER):
        return
    now = timezone.now()
    swept = ConversationImport.objects.filter(pk=job.pk, updated_at=job.updated_at).update(
        status=ConversationImport.Status.FAILED, error=STOPPED, finished_at=now, updated_at=now
    )
    if swept:
        job.status, job.error, job.finished_at = ConversationImport.Status.FAILED, STOPPED, now
