"""How long an import of a ChatGPT export takes, and how long it holds other writes.

    .venv/bin/python bench/imports.py [--conversations 2000] [--postgres]

Writes a ChatGPT-shaped conversations.json (each conversation: 3 turns, the last reply
regenerated once, so 7 messages in two branches) into a throwaway database (SQLite, or
PostgreSQL with --postgres: a database made and dropped here), then times
``imports.read_file`` (parse and check) and ``imports.store`` (one transaction), counting
the statements. Meanwhile another thread writes one small row every 50 ms, as a reply's
checkpoint would: its longest wait is what an import costs the rest of the site.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def chatgpt_export(count: int) -> list[dict]:
    conversations = []
    for n in range(count):
        at = 1_700_000_000 + n * 100

        def node(key, parent, children, role=None, text="", offset=0, at=at):
            message = None
            if role:
                message = {
                    "id": key,
                    "author": {"role": role},
                    "content": {"content_type": "text", "parts": [text]},
                    "create_time": at + offset,
                    "metadata": {"model_slug": "gpt-4o"} if role == "assistant" else {},
                }
            return key, {"id": key, "parent": parent, "children": children, "message": message}

        words = f"conversation {n} about leeks, potatoes and the weather in spring " * 4
        nodes = dict(
            [
                node("root", None, ["u1"]),
                node("u1", "root", ["a1"], "user", f"Question one of {words}", 1),
                node("a1", "u1", ["u2"], "assistant", f"Answer one: {words}", 2),
                node("u2", "a1", ["a2"], "user", "And then?", 3),
                node("a2", "u2", ["u3"], "assistant", f"Then {words}", 4),
                node("u3", "a2", ["a3", "a3b"], "user", "Last question", 5),
                node("a3", "u3", [], "assistant", f"A first last answer {words}", 6),
                node("a3b", "u3", [], "assistant", f"A regenerated answer {words}", 7),
            ]
        )
        conversations.append(
            {
                "title": f"Imported {n}",
                "create_time": at,
                "update_time": at + 7,
                "current_node": "a3b",
                "mapping": nodes,
            }
        )
    return conversations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-imports-"))
    pg_name = f"bench_imports_{os.getpid()}"
    if args.postgres:
        import psycopg

        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {pg_name}")
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{pg_name}"
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'site.sqlite3'}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.pop("REDIS_URL", None)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, connections
    from django.test.utils import CaptureQueriesContext

    from conversations import imports
    from conversations.models import Conversation, Message

    call_command("migrate", verbosity=0)
    owner = get_user_model().objects.create(username="importer")
    other = get_user_model().objects.create(username="writer")
    path = tmp / "conversations.json"
    path.write_text(json.dumps(chatgpt_export(args.conversations)))
    size_mb = path.stat().st_size / 1e6

    started = time.perf_counter()
    imported = imports.read_file(path)
    read_s = time.perf_counter() - started
    messages = sum(len(c.messages) for c in imported)

    # Another writer, as a reply's checkpoints are: one small row every 50 ms.
    stop, waits = threading.Event(), []

    def writer():
        conversation = Conversation.objects.create(owner=other, title="beside the import")
        while not stop.is_set():
            began = time.perf_counter()
            try:
                Message.objects.create(conversation=conversation, role="user", content="tick")
                waits.append(time.perf_counter() - began)
            except Exception as error:  # a lock the write gave up on
                waits.append(float("inf"))
                print(f"  the other writer failed: {type(error).__name__}: {error}")
            time.sleep(0.05)
        connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        imports.store(owner.pk, imported)
        store_s = time.perf_counter() - started
    time.sleep(0.2)
    stop.set()
    thread.join()

    stored = Message.objects.filter(conversation__owner=owner).count()
    longest = max(waits) if waits else 0.0
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"{backend}: {args.conversations:,} conversations, {messages:,} messages, {size_mb:.1f} MB"
    )
    print(f"  read and check: {read_s:.2f} s")
    print(f"  store (one transaction): {store_s:.2f} s, {len(queries)} statements")
    print(f"  stored: {stored:,} messages")
    print(
        f"  another writer's longest wait meanwhile: {longest * 1000:.0f} ms ({len(waits)} writes)"
    )
    connections.close_all()
    if args.postgres:
        import psycopg

        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as db:
            db.execute(f"DROP DATABASE {pg_name}")


if __name__ == "__main__":
    main()
