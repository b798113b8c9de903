"""How fast the admin's review pages are on a large data set (bench/README.md): a throwaway
SQLite file, or DATABASE_URL if set (an empty database); never the project's db.sqlite3.

    .venv/bin/python bench/admin_overview.py [--messages 100000] [--repeat 5]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = ["model", "reply", "token", "stream", "question", "answer", "python", "django"]
WORDS += ["table", "chart", "week", "budget", "plan", "travel", "recipe", "garden"]
MODELS = ["gpt-4o-mini", "llama3.2", "qwen2.5-7b-instruct"]
USERS, DAYS, PER_CONVERSATION = 50, 90, 20
ADMIN_CHANGE = "admin:conversations_conversation_change"


def build(count: int):
    """Bulk-create the data set, exchanges of a user message and a reply (3% of the replies
    failed, 2% interrupted); return the conversation whose first message says "zebras"."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from conversations.models import Conversation, Message

    rng, now, User, Status = random.Random(5), timezone.now(), get_user_model(), Message.Status
    users = User.objects.bulk_create(User(username=f"user{n}") for n in range(USERS))
    earliest, conversations = now - timedelta(days=DAYS), []
    for _ in range(max(1, count // PER_CONVERSATION)):
        start = earliest + timedelta(seconds=rng.uniform(0, DAYS * 86_400))
        end = min(now, start + timedelta(minutes=PER_CONVERSATION))
        conversations.append({"created_at": start, "updated_at": end})
    for fields in conversations:  # drawn in this order, so the data set stays the same
        fields |= {"owner": rng.choice(users), "title": " ".join(rng.choices(WORDS, k=5))}
        fields["model"] = rng.choice(MODELS)
    conversations = Conversation.objects.bulk_create(Conversation(**f) for f in conversations)

    def reply(conversation, at):
        roll = rng.random()
        status = Status.COMPLETE if roll >= 0.05 else Status.INTERRUPTED
        status = Status.FAILED if roll < 0.03 else status
        prompt, completion = rng.randint(50, 4000), rng.randint(0, 800)
        fields = {"role": Message.Role.ASSISTANT, "content": " ".join(rng.choices(WORDS, k=60))}
        fields |= {"status": status, "finish_reason": "stop" if status == Status.COMPLETE else ""}
        fields["error"] = "upstream error" if status == Status.FAILED else ""
        fields |= {"prompt_tokens": prompt, "completion_tokens": completion}
        fields |= {"total_tokens": prompt + completion, "model": conversation.model}
        fields |= {"created_at": at, "finished_at": at + timedelta(seconds=5)}
        return Message(conversation=conversation, **fields)

    def messages():
        for conversation in conversations:
            for n in range(PER_CONVERSATION):
                at = min(now, conversation.created_at + timedelta(minutes=n))
                if n % 2:
                    yield reply(conversation, at)
                    continue
                content, role = " ".join(rng.choices(WORDS, k=12)), Message.Role.USER
                times = {"created_at": at, "finished_at": at}
                yield Message(conversation=conversation, role=role, content=content, **times)

    Message.objects.bulk_create(messages(), batch_size=5_000)
    Message.objects.link_in_order()
    rare = conversations[len(conversations) // 2]  # a word no other message says, for search
    first = rare.messages.order_by("pk").values("pk")[:1]
    Message.objects.filter(pk=first).update(content="Tell me about zebras")
    return rare


def measure(client, url: str, repeat: int) -> tuple[float, float, int]:
    """Best and median seconds, and the number of queries, of ``repeat`` requests."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
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
    from django.utils import timezone

    from conversations.models import Conversation, Message

    setup_test_environment()  # lets the test client's host in
    tables = connection.introspection.table_names()
    if Message._meta.db_table in tables and Message.objects.exists():
        raise SystemExit("The database holds messages already; give the benchmark an empty one.")
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    rare = build(args.messages)
    built = time.perf_counter() - started
    with connection.cursor() as cursor:  # as autovacuum (or SQLite's optimize) would
        cursor.execute("ANALYZE")
    print(
        f"{connection.vendor}: {Message.objects.count():,} messages in "
        f"{Conversation.objects.count():,} conversations of {USERS} users "
        f"over {DAYS} days, built in {built:.1f} s"
    )
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("bench-admin", "", None))
    conversations = reverse("admin:conversations_conversation_changelist")
    messages = reverse("admin:conversations_message_changelist")
    usage, today = reverse("admin:conversations_conversation_usage"), timezone.localdate()
    since, rare_url = today - timedelta(days=DAYS - 1), reverse(ADMIN_CHANGE, args=[rare.pk])
    pages = [
        ("usage overview, last 30 days", usage),
        (f"usage overview, last {DAYS} days", f"{usage}?date_from={since}&date_to={today}"),
        ("conversation list", conversations),
        ("conversation list, by tokens", f"{conversations}?o=-5"),
        ("conversation list, failed or interrupted", f"{conversations}?problem=any"),
        ("conversation list, last reply failed", f"{conversations}?last_reply=failed"),
        ("conversation list, search message text", f"{conversations}?q=zebras"),
        ("message list", messages),
        ("message list, failed", f"{messages}?status__exact=failed"),
        ("message list, search", f"{messages}?q=zebras"),
        (f"transcript ({PER_CONVERSATION} messages)", rare_url),
    ]
    print(f"\n{'page':<44} {'best':>8} {'median':>8} {'queries':>8}")
    for name, url in pages:
        best, median, queries = measure(client, url, args.repeat)
        print(f"{name:<44} {best * 1000:>6.0f}ms {median * 1000:>6.0f}ms {queries:>8}")
    # The sidebar's search, as the owner of the conversation that says "zebras" (about
    # 2,000 messages of their own, 100,000 in all): a rare word, its prefix, common words.
    client.force_login(rare.owner)
    search = reverse("conversation-search")
    print(f"\n{'site search (its owner)':<44} {'best':>8} {'median':>8} {'queries':>8}")
    for name, query in [
        ("a rare word", "zebras"),
        ("the start of a rare word", "zeb"),
        ("a common word", "budget"),
        ("two common words", "travel garden"),
        ("a word nobody wrote", "quokka"),
    ]:
        best, median, queries = measure(client, f"{search}?q={query}", args.repeat)
        print(f"{name:<44} {best * 1000:>6.0f}ms {median * 1000:>6.0f}ms {queries:>8}")
    if workdir is not None:
        connection.close()
        workdir.cleanup()


if __name__ == "__main__":
    main()
