"""The servers replies come from: the default one and those configured in the admin.

The default server is OPENAI_BASE_URL with OPENAI_API_KEY (or, with neither, the
offline demo model): it needs no configuration and no database row. Administrators add
more as ``Endpoint`` rows, each with its own base URL, API key (encrypted at rest, see
``encrypt``), the models it offers and what its server accepts.

A conversation chooses a model of a server as one value, ``choice(endpoint_id, model)``:
the model's name for the default server, ``@<id>/<name>`` for an endpoint.
"""

import base64
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


class KeyUnreadable(Exception):
    """An API key stored with an encryption key that is no longer configured."""


def _fernet() -> MultiFernet:
    """CHAT_ENCRYPTION_KEYS (the first encrypts, every one decrypts: add a new key first,
    then ``manage.py rotate_endpoint_keys``), else a key derived from SECRET_KEY."""
    keys = [key.strip() for key in settings.CHAT_ENCRYPTION_KEYS if key.strip()]
    if not keys:
        digest = hashlib.sha256(b"chatsite endpoint keys:" + settings.SECRET_KEY.encode())
        keys = [base64.urlsafe_b64encode(digest.digest()).decode()]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode() if text else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as error:
        raise KeyUnreadable(
            "The API key cannot be decrypted: CHAT_ENCRYPTION_KEYS lacks the key it was "
            "stored with. Enter the API key again in the admin."
        ) from error


def rotate(token: str) -> str:
    """``token`` encrypted again with the first key (for a key rotation)."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as error:
        raise KeyUnreadable("The API key cannot be decrypted with CHAT_ENCRYPTION_KEYS.") from error


_CHOICE = re.compile(r"@(\d{1,18})/(.*)", re.DOTALL)


def choice(endpoint_id: int | None, model: str) -> str:
    """The value naming ``model`` of an endpoint (None: the default server)."""
    return model if endpoint_id is None else f"@{endpoint_id}/{model}"


def parse_choice(value: str) -> tuple[int | None, str]:
    """(endpoint id or None for the default server, model name) of a ``choice``."""
    match = _CHOICE.fullmatch(value or "")
    if match is None:
        return None, value or ""
    return int(match[1]), match[2]


@dataclass(frozen=True)
class Server:
    """What a request needs of a server, read once (no database access after)."""

    id: int | None  # None: the default server
    name: str
    base_url: str
    api_key: str = field(repr=False)
    models: tuple[str, ...] = ()  # configured; empty: those its GET /models lists
    stream_options: bool = True
    send_reasoning: bool = False


class Endpoint(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="Shown above its models.")
    base_url = models.URLField(
        "base URL", max_length=500, help_text="Up to /v1, as in https://api.example.com/v1"
    )
    api_key_encrypted = models.TextField(blank=True, editable=False)
    model_names = models.TextField(
        "models",
        blank=True,
        help_text="The models to offer, one per line. Empty: every model the server lists "
        "at GET /models.",
    )
    stream_options = models.BooleanField(
        "accepts stream_options",
        default=True,
        help_text="Ask for token usage at the end of each stream (include_usage). Off for a "
        "server that refuses it.",
    )
    send_reasoning = models.BooleanField(
        "sends reasoning back",
        default=False,
        help_text="Earlier replies' reasoning goes back to the model (reasoning_content); "
        "most servers want it left out.",
    )
    enabled = models.BooleanField(default=True)
    position = models.PositiveIntegerField(default=0, help_text="Lower comes first.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self):
        return self.name

    @property
    def api_key(self) -> str:
        return decrypt(self.api_key_encrypted)

    @api_key.setter
    def api_key(self, value: str) -> None:
        self.api_key_encrypted = encrypt(value)

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)

    def configured_models(self) -> tuple[str, ...]:
        names = (line.strip() for line in self.model_names.splitlines())
        return tuple(dict.fromkeys(name for name in names if name))

    def server(self) -> Server:
        """Raises KeyUnreadable when its API key cannot be decrypted."""
        return Server(
            id=self.pk,
            name=self.name,
            base_url=self.base_url,
            api_key=self.api_key,
            models=self.configured_models(),
            stream_options=self.stream_options,
            send_reasoning=self.send_reasoning,
        )
