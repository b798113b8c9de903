"""Full-text search over message text: FTS5 on SQLite, a GIN index on PostgreSQL.

SQLite keeps an external-content FTS5 table in step with the messages by triggers;
PostgreSQL indexes ``to_tsvector('simple', content)``, which ``conversations.search``
queries. Other databases search with a plain scan.
"""

from django.db import migrations

SQLITE = [
    """CREATE VIRTUAL TABLE conversations_message_fts USING fts5(
        content, content='conversations_message', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER conversations_message_fts_insert AFTER INSERT ON conversations_message
       BEGIN INSERT INTO conversations_message_fts(rowid, content)
             VALUES (new.id, new.content); END""",
    """CREATE TRIGGER conversations_message_fts_delete AFTER DELETE ON conversations_message
       BEGIN INSERT INTO conversations_message_fts(conversations_message_fts, rowid, content)
             VALUES ('delete', old.id, old.content); END""",
    """CREATE TRIGGER conversations_message_fts_update AFTER UPDATE OF content
       ON conversations_message
       BEGIN INSERT INTO conversations_message_fts(conversations_message_fts, rowid, content)
             VALUES ('delete', old.id, old.content);
             INSERT INTO conversations_message_fts(rowid, content)
             VALUES (new.id, new.content); END""",
    "INSERT INTO conversations_message_fts(conversations_message_fts) VALUES ('rebuild')",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS conversations_message_fts_insert",
    "DROP TRIGGER IF EXISTS conversations_message_fts_delete",
    "DROP TRIGGER IF EXISTS conversations_message_fts_update",
    "DROP TABLE IF EXISTS conversations_message_fts",
]
POSTGRES = [
    """CREATE INDEX conversations_message_search ON conversations_message
       USING GIN (to_tsvector('simple', content))""",
]
POSTGRES_DROP = ["DROP INDEX IF EXISTS conversations_message_search"]


def run(statements):
    def apply(apps, schema_editor):
        for statement in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(statement)

    return apply


class Migration(migrations.Migration):
    dependencies = [("conversations", "0010_conversation_title_generated")]

    operations = [
        migrations.RunPython(
            run({"sqlite": SQLITE, "postgresql": POSTGRES}),
            run({"sqlite": SQLITE_DROP, "postgresql": POSTGRES_DROP}),
        )
    ]
