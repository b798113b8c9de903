"""How fast the admin's review pages are on a large data set.

Builds users, conversations and 100,000 messages (by default) spread over 90 days
with bulk_create, then requests the usage overview, the conversation and message
lists and one transcript through Django's test client as a superuser, and prints
the best and median time and the number of queries of each page.

    .venv/bin/python bench/admin_overview.py [--messages 100000] [--repeat 5]

The data goes to a throwaway SQLite file, or to DATABASE_URL when it is set
(which must then be an empty database); never to the project's db.sqlite3.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["model", "reply", "token", "stream", "question", "answer", "python", "django"]
WORDS += ["table", "chart", "week", "budget", "plan", "travel", "recipe", "garden"]
MODELS = ["gpt-4o-mini", "llama3.2", "qwen2.5-7b-instruct"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-conversation", type=int, default=20)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args()


def build(args):
    """Bulk-create the data set: exchanges of a user message and a reply."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from conversations.models import Conversation, Message

    rng = random.Random(5)
    now = timezone.now()
    User = get_user_model()
    users = User.objects.bulk_create(User(username=f"user{n}") for n in range(args.users))

    conversation_count = max(1, args.messages // args.per_conversation)
    starts = [
        now - timedelta(days=args.days) + timedelta(seconds=rng.uniform(0, args.days * 86_400))
        for _ in range(conversation_count)
    ]
    conversations = Conversation.objects.bulk_create(
        Conversation(
            owner=rng.choice(users),
            title=" ".join(rng.choices(WORDS, k=5)),
            model=rng.choice(MODELS),
            created_at=start,
            updated_at=min(now, start + timedelta(minutes=args.per_conversation)),
        )
        for start in starts
    )

    def messages():
        for conversation in conversations:
            for n in range(args.per_conversation):
                at = min(now, conversation.created_at + timedelta(minutes=n))
                if n % 2 == 0:
                    yield Message(
                        conversation=conversation,
                        role=Message.Role.USER,
                        content=" ".join(rng.choices(WORDS, k=12)),
                        created_at=at,
                        finished_at=at,
                    )
                    continue
                roll = rng.random()
                status = (
                    Message.Status.FAILED
                    if roll < 0.03
                    else Message.Status.INTERRUPTED
                    if roll < 0.05
                    else Message.Status.COMPLETE
                )
                prompt, completion = rng.randint(50, 4000), rng.randint(0, 800)
                yield Message(
                    conversation=conversation,
                    role=Message.Role.ASSISTANT,
                    content=" ".join(rng.choices(WORDS, k=60)),
                    status=status,
                    finish_reason="stop" if status == Message.Status.COMPLETE else "",
                    error="upstream error" if status == Message.Status.FAILED else "",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    total_tokens=prompt + completion,
                    model=conversation.model,
                    created_at=at,
                    finished_at=at + timedelta(seconds=5),
                )

    Message.objects.bulk_create(messages(), batch_size=5_000)
    # One conversation says a word no other does, for the search.
    rare = conversations[len(conversations) // 2]
    Message.objects.filter(pk=rare.messages.order_by("pk").values("pk")[:1]).update(
        content="Tell me about zebras"
    )
    return rare


def measure(client, url, repeat):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            if hasattr(response, "render") and not response.is_rendered:
                response.render()
            times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}")
    return min(times), statistics.median(times), len(queries)


def main():
    args = parse_args()
    workdir = None
    if not os.environ.get("DATABASE_URL"):
        workdir = tempfile.TemporaryDirectory(prefix="admin-bench-")
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(workdir.name) / 'bench.sqlite3'}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    from conversations.models import Conversation, Message

    setup_test_environment()  # lets the test client's host in
    tables = connection.introspection.table_names()
    if Message._meta.db_table in tables and Message.objects.exists():
        raise SystemExit("The database holds messages already; give the benchmark an empty one.")
    call_command("migrate", verbosity=0)

    started = time.perf_counter()
    rare = build(args)
    built = time.perf_counter() - started
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(
        f"{connection.vendor}: {Message.objects.count():,} messages in "
        f"{Conversation.objects.count():,} conversations of {args.users} users "
        f"over {args.days} days, built in {built:.1f} s"
    )

    admin = get_user_model().objects.create_superuser("bench-admin", "", None)
    client = Client()
    client.force_login(admin)

    conversations = reverse("admin:conversations_conversation_changelist")
    messages = reverse("admin:conversations_message_changelist")
    usage = reverse("admin:conversations_conversation_usage")
    today = django.utils.timezone.localdate()
    pages = [
        ("usage overview, last 30 days", usage),
        (
            f"usage overview, last {args.days} days",
            f"{usage}?date_from={today - timedelta(days=args.days - 1)}&date_to={today}",
        ),
        ("conversation list", conversations),
        ("conversation list, by tokens", f"{conversations}?o=-5"),
        ("conversation list, failed or interrupted", f"{conversations}?problem=any"),
        ("conversation list, last reply failed", f"{conversations}?last_reply=failed"),
        ("conversation list, search message text", f"{conversations}?q=zebras"),
        ("message list", messages),
        ("message list, failed", f"{messages}?status__exact=failed"),
        ("message list, search", f"{messages}?q=zebras"),
        (
            f"transcript ({args.per_conversation} messages)",
            reverse("admin:conversations_conversation_change", args=[rare.pk]),
        ),
    ]
    print(f"\n{'page':<44} {'best':>8} {'median':>8} {'queries':>8}")
    for name, url in pages:
        best, median, queries = measure(client, url, args.repeat)
        print(f"{name:<44} {best * 1000:>6.0f}ms {median * 1000:>6.0f}ms {queries:>8}")

    if workdir is not None:
        connection.close()
        workdir.cleanup()


if __name__ == "__main__":
    main()
