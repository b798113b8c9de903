"""What operators rely on: the deployment steps in the README's order, private pages."""

import os
import subprocess
import sys

import pytest
from django.urls import reverse

from conversations.models import Conversation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MIGRATE_WITHOUT_STATIC = """
import chatsite.settings as settings
settings.STATIC_ROOT = {static_root!r}  # no collectstatic has run: no manifest yet
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0, skip_checks=False)  # as manage.py runs it
print("migrated")
"""


def test_migrate_works_before_collectstatic_with_debug_off(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "a-test-key",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'site.sqlite3'}",
        "REDIS_URL": "",
    }
    script = MIGRATE_WITHOUT_STATIC.format(static_root=str(tmp_path / "static"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "migrated" in result.stdout


@pytest.mark.django_db
def test_conversation_pages_and_exports_are_private(client, user):
    conversation = Conversation.objects.create(owner=user)
    client.force_login(user)
    for name, args in [
        ("conversation-list", []),
        ("conversation-detail", [conversation.pk]),
        ("conversation-export", [conversation.pk]),
    ]:
        response = client.get(reverse(name, args=args))
        assert response.status_code == 200
        assert "private" in response["Cache-Control"], name
