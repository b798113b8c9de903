"""Searching a person's conversations by title and by the text of their messages.

SQLite answers from an FTS5 index and PostgreSQL from a GIN index on
``to_tsvector('simple', content)`` (migration 0011), so a search stays fast at hundreds of
thousands of messages; other databases scan. Words must all appear (in any order); the
last one may be the start of a word, so results follow the typing.
"""

import re
from dataclasses import dataclass

from django.db import connection

from .models import Conversation, Message

MAX_QUERY = 200
MAX_RESULTS = 50
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hit:
    conversation: Conversation
    snippet: str  # a piece of a matching message, as text ("" when the title matched)


def search(user, query: str, limit: int = MAX_RESULTS) -> list[Hit]:
    words = WORD.findall((query or "")[:MAX_QUERY])[:12]
    if not words:
        return []
    owned = Conversation.objects.owned_by(user)
    phrase = " ".join(words)
    by_title = list(owned.filter(title__icontains=phrase).order_by("-updated_at")[:limit])
    matches = _message_matches(user, words, limit * 4)  # conversation id -> message text
    found = {c.pk: Hit(c, "") for c in by_title}
    rest = owned.filter(pk__in=[pk for pk in matches if pk not in found])
    for conversation in rest.order_by("-updated_at")[:limit]:
        found[conversation.pk] = Hit(conversation, excerpt(matches[conversation.pk], words))
    hits = sorted(found.values(), key=lambda h: h.conversation.updated_at, reverse=True)
    return hits[:limit]


def _message_matches(user, words: list[str], limit: int) -> dict[int, str]:
    """The newest matching message of each conversation with one, newest first."""
    if connection.vendor == "sqlite":
        # Each word quoted (FTS5 syntax is not the user's to write); the last as a prefix.
        terms = " ".join(f'"{w}"' for w in words[:-1]) + f' "{words[-1]}"*'
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT m.conversation_id, m.content FROM conversations_message_fts f
                   JOIN conversations_message m ON m.id = f.rowid
                   JOIN conversations_conversation c ON c.id = m.conversation_id
                   WHERE conversations_message_fts MATCH %s AND c.owner_id = %s
                   ORDER BY m.id DESC LIMIT %s""",
                [terms.strip(), user.pk, limit],
            )
            rows = cursor.fetchall()
    else:
        messages = Message.objects.filter(conversation__owner=user)
        if connection.vendor == "postgresql":
            # The expression of the index (0011), so the planner uses it.
            terms = " & ".join([*words[:-1], f"{words[-1]}:*"])
            match = (
                "to_tsvector('simple', conversations_message.content) @@ to_tsquery('simple', %s)"
            )
            messages = messages.extra(where=[match], params=[terms])
        else:
            for word in words:
                messages = messages.filter(content__icontains=word)
        rows = messages.order_by("-pk").values_list("conversation_id", "content")[:limit]
    matches: dict[int, str] = {}
    for conversation_id, content in rows:
        matches.setdefault(conversation_id, content)
    return matches


def excerpt(text: str, words: list[str], width: int = 120) -> str:
    """About ``width`` characters of ``text`` around the first of ``words`` in it."""
    text = " ".join(text.split())
    lowered = text.lower()
    positions = [lowered.find(w.lower()) for w in words if w.lower() in lowered]
    at = min(positions) if positions else 0
    start = max(0, at - width // 3)
    piece = text[start : start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")
