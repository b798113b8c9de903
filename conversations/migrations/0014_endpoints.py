"""Endpoints configured in the admin; each reply records the endpoint that wrote it.

On SQLite, adding a column with a default rebuilds the message table, which drops the
full-text triggers of 0011: they are dropped first and made again (with a rebuild) after,
as in 0013.
"""

import importlib

import django.db.models.deletion
from django.db import migrations, models

search = importlib.import_module("conversations.migrations.0011_message_search")
versions = importlib.import_module("conversations.migrations.0013_message_versions")
DROP_TRIGGERS, MAKE_TRIGGERS = versions.DROP_TRIGGERS, versions.MAKE_TRIGGERS


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0013_message_versions"),
    ]

    operations = [
        migrations.CreateModel(
            name="Endpoint",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "name",
                    models.CharField(
                        help_text="Shown above its models.", max_length=100, unique=True
                    ),
                ),
                (
                    "base_url",
                    models.URLField(
                        help_text="Up to /v1, as in https://api.example.com/v1",
                        max_length=500,
                        verbose_name="base URL",
                    ),
                ),
                ("api_key_encrypted", models.TextField(blank=True, editable=False)),
                (
                    "model_names",
                    models.TextField(
                        blank=True,
                        help_text="The models to offer, one per line. Empty: every model the "
                        "server lists at GET /models.",
                        verbose_name="models",
                    ),
                ),
                (
                    "stream_options",
                    models.BooleanField(
                        default=True,
                        help_text="Ask for token usage at the end of each stream "
                        "(include_usage). Off for a server that refuses it.",
                        verbose_name="accepts stream_options",
                    ),
                ),
                (
                    "send_reasoning",
                    models.BooleanField(
                        default=False,
                        help_text="Earlier replies' reasoning goes back to the model "
                        "(reasoning_content); most servers want it left out.",
                        verbose_name="sends reasoning back",
                    ),
                ),
                ("enabled", models.BooleanField(default=True)),
                (
                    "position",
                    models.PositiveIntegerField(default=0, help_text="Lower comes first."),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "ordering": ["position", "name"],
            },
        ),
        migrations.RunPython(
            search.run({"sqlite": DROP_TRIGGERS}), search.run({"sqlite": MAKE_TRIGGERS})
        ),
        migrations.AddField(
            model_name="message",
            name="endpoint_name",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="message",
            name="endpoint",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="conversations.endpoint",
            ),
        ),
        migrations.RunPython(
            search.run({"sqlite": MAKE_TRIGGERS}), search.run({"sqlite": DROP_TRIGGERS})
        ),
    ]
