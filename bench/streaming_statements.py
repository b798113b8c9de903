"""Database statements per reply, counted in-process (the site has no counter of its own).

Runs one reply at a time through the whole ASGI stack (origin checks, session,
consumer, reply task) with Channels' test communicator, against the bench
upstream in a thread streaming as fast as it can, and counts every SQL
statement from the moment the message is sent to the final frame, for each
reply length. The count should not depend on the length: the design writes
per reply, not per token. (A checkpoint adds one UPDATE per
CHAT_CHECKPOINT_INTERVAL of streaming time, whatever the length; these
replies are over well before the first.)

Uses DATABASE_URL (bench/streaming.py passes its throwaway database) and
prints one JSON line: ``{"50": {"statements": ..., "kinds": {...}}, ...}``.

    DATABASE_URL=sqlite:////tmp/x.sqlite3 .venv/bin/python bench/streaming_statements.py 50 2000
"""

import asyncio
import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming_upstream import BenchModel  # noqa: E402

from conversations.demo import ServerThread  # noqa: E402

ORIGIN = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


class StatementCounter:
    """Counts SQL statements from every thread (database_sync_to_async runs them in one)."""

    def __init__(self):
        from django.db.backends.utils import CursorWrapper

        self.kinds: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        original = CursorWrapper._execute

        def counting(cursor, sql, *args, **kwargs):
            with self._lock:
                self.kinds[kind_of(sql)] += 1
            return original(cursor, sql, *args, **kwargs)

        CursorWrapper._execute = counting

    def take(self) -> collections.Counter:
        with self._lock:
            kinds, self.kinds = self.kinds, collections.Counter()
        return kinds


def kind_of(sql: str) -> str:
    """``SELECT conversations_message`` and the like: the verb and the first table."""
    words = sql.replace('"', " ").split()
    verb = words[0].upper() if words else "?"
    for keyword in ("FROM", "INTO", "UPDATE"):
        upper = [word.upper() for word in words]
        if keyword in upper[: len(upper) - 1] and (keyword != "UPDATE" or verb == "UPDATE"):
            return f"{verb} {words[upper.index(keyword) + 1]}"
    return verb


def set_up():
    """A user, their logged-in session cookie and a conversation (sync, before the loop)."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from conversations.models import Conversation

    call_command("migrate", verbosity=0, interactive=False)
    name = f"bench-statements-{os.getpid()}-{int(time.time())}"
    user = get_user_model().objects.create_user(name, password=None)
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return user, cookie.encode(), Conversation


async def count_reply(application, conversation_id: int, cookie: bytes, counter, tokens) -> dict:
    from channels.testing import WebsocketCommunicator

    socket = WebsocketCommunicator(
        application, f"/ws/conversations/{conversation_id}/", [*ORIGIN, (b"cookie", cookie)]
    )
    connected, _ = await socket.connect()
    if not connected:
        raise RuntimeError("the site refused the websocket")
    counter.take()  # what the handshake did is not the reply's
    started = time.monotonic()
    await socket.send_to(text_data=json.dumps({"action": "send", "content": f"bench-{tokens}"}))
    async with asyncio.timeout(120):
        while True:
            frame = await socket.receive_from(120)
            if 'data-role="assistant"' in frame and 'data-status="streaming"' not in frame:
                break
    seconds = time.monotonic() - started
    kinds = counter.take()
    await socket.disconnect()
    if 'data-status="complete"' not in frame:
        raise RuntimeError(f"the {tokens}-token reply did not complete: {frame[:300]}")
    return {"statements": sum(kinds.values()), "kinds": dict(kinds), "seconds": seconds}


def main(argv: list[str]) -> None:
    lengths = [int(arg) for arg in argv] or [50, 2000]
    model = BenchModel(tokens_per_second=0, tokens=lengths[0])
    upstream = ServerThread(model).start()
    os.environ.update(
        OPENAI_BASE_URL=upstream.base_url,
        OPENAI_API_KEY="",
        CHAT_MODEL="bench",
        REDIS_URL="",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
    )
    import django

    django.setup()
    user, cookie, Conversation = set_up()
    from chatsite.asgi import application  # after setup: it sweeps orphans at import

    conversations = [Conversation.objects.create(owner=user, model="bench") for _ in lengths]
    counter = StatementCounter()

    async def count_all() -> dict:
        results = {}
        for tokens, conversation in zip(lengths, conversations, strict=True):
            model.tokens = tokens
            results[str(tokens)] = await count_reply(
                application, conversation.pk, cookie, counter, tokens
            )
        return results

    results = asyncio.run(count_all())
    upstream.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
