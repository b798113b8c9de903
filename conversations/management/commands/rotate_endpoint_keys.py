"""Encrypt every endpoint's API key again with the first of CHAT_ENCRYPTION_KEYS."""

from django.core.management.base import BaseCommand, CommandError

from conversations.endpoints import Endpoint, KeyUnreadable, rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt the endpoints' API keys with the first key of CHAT_ENCRYPTION_KEYS "
        "(put the new key first, run this, then drop the old key)."
    )

    def handle(self, *args, **options):
        done = 0
        for endpoint in Endpoint.objects.exclude(api_key_encrypted=""):
            try:
                endpoint.api_key_encrypted = rotate(endpoint.api_key_encrypted)
            except KeyUnreadable as error:
                raise CommandError(f"{endpoint.name}: {error}") from error
            endpoint.save(update_fields=["api_key_encrypted"])
            done += 1
        self.stdout.write(f"Re-encrypted the API keys of {done} endpoint(s).")
