"""Versions of a turn: each message links to its parent, and the branch shown follows,
from each message, the child chosen last.

Existing conversations become one branch: each message's parent is the one before it.
On SQLite, adding a column with a default rebuilds the message table, which drops the
full-text triggers of 0011; they are dropped first and made again (with a rebuild) after.
"""

import importlib

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

search = importlib.import_module("conversations.migrations.0011_message_search")

DROP_TRIGGERS = [s for s in search.SQLITE_DROP if "TRIGGER" in s]
MAKE_TRIGGERS = [s for s in search.SQLITE if "CREATE TRIGGER" in s or "'rebuild'" in s]


def link_in_order(apps, schema_editor):
    Message = apps.get_model("conversations", "Message")
    rows = Message.objects.order_by("conversation_id", "pk").values_list(
        "pk", "conversation_id", "created_at"
    )
    changed, previous = [], (None, None)
    for pk, conversation_id, created_at in rows.iterator(chunk_size=2000):
        parent = previous[0] if previous[1] == conversation_id else None
        changed.append(Message(pk=pk, parent_id=parent, chosen_at=created_at))
        previous = (pk, conversation_id)
        if len(changed) >= 2000:
            Message.objects.bulk_update(changed, ["parent", "chosen_at"])
            changed = []
    Message.objects.bulk_update(changed, ["parent", "chosen_at"])


class Migration(migrations.Migration):
    dependencies = [("conversations", "0012_conversation_pinned")]

    operations = [
        migrations.RunPython(
            search.run({"sqlite": DROP_TRIGGERS}), search.run({"sqlite": MAKE_TRIGGERS})
        ),
        migrations.AddField(
            model_name="message",
            name="chosen_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="conversations.message",
            ),
        ),
        migrations.RunPython(link_in_order, migrations.RunPython.noop),
        migrations.RunPython(
            search.run({"sqlite": MAKE_TRIGGERS}), search.run({"sqlite": DROP_TRIGGERS})
        ),
    ]
