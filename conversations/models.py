from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from .demo import DEMO_LABEL, DEMO_MODEL


def model_label(name: str) -> str:
    """How the UI names a model; the bundled demo is never passed off as a language model."""
    name = name or settings.CHAT_MODEL
    if not settings.OPENAI_BASE_URL and name in ("", DEMO_MODEL):
        return DEMO_LABEL
    return name or "the server's default model"


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="Model name sent upstream.")
    system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent")]

    def __str__(self):
        return self.title or f"Conversation {self.pk}"

    def get_absolute_url(self):
        return reverse("conversation-detail", args=[self.pk])

    @property
    def websocket_path(self) -> str:
        return f"/ws/conversations/{self.pk}/"

    @property
    def display_title(self) -> str:
        return self.title or "New conversation"

    @property
    def model_label(self) -> str:
        return model_label(self.model)

    def prompt(self) -> list[dict]:
        """The messages sent upstream for the next reply."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [m.to_openai() for m in self.messages.for_prompt()]


class MessageQuerySet(models.QuerySet):
    def streaming(self):
        return self.filter(status=Message.Status.STREAMING)

    def orphaned(self, *, running=(), stale_after: float = 0.0):
        """Streaming rows whose reply task is gone: not running here, no checkpoint for a while."""
        cutoff = timezone.now() - timedelta(seconds=stale_after)
        return (
            self.streaming()
            .exclude(pk__in=list(running))
            .filter(Q(checkpoint_at__lte=cutoff) | Q(checkpoint_at__isnull=True))
        )

    def interrupt(self, error: str) -> int:
        """End streaming rows as interrupted, keeping their (checkpointed) text."""
        return self.streaming().update(
            status=Message.Status.INTERRUPTED, error=error, finished_at=timezone.now()
        )

    def for_prompt(self):
        """The history sent upstream: finished messages that have text, oldest first.

        Tool calls are not sent back: the site does not run tools, and an
        assistant message with tool calls but no tool results is refused by
        OpenAI-compatible servers.
        """
        return self.exclude(status=Message.Status.STREAMING).exclude(content="").order_by("pk")


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        INTERRUPTED = "interrupted"
        FAILED = "failed"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)
    # While streaming: when the reply task last saved its text. A streaming row whose
    # checkpoint is old has lost its task (the process died) and is an orphan.
    checkpoint_at = models.DateTimeField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["pk"]
        indexes = [
            models.Index(fields=["conversation", "id"], name="message_conversation_order"),
            models.Index(fields=["status"], name="message_status"),
            models.Index(fields=["created_at"], name="message_created"),
        ]
        constraints = [
            # One reply at a time per conversation, enforced by the database so
            # two tabs (or two processes) can never start two.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="one_streaming_reply_per_conversation",
            ),
        ]

    def __str__(self):
        return f"{self.role} message {self.pk}"

    @property
    def dom_id(self) -> str:
        return f"message-{self.pk}"

    @property
    def model_label(self) -> str:
        return model_label(self.model)

    @property
    def is_streaming(self) -> bool:
        return self.status == self.Status.STREAMING

    def finish(
        self,
        *,
        status,
        content,
        tool_calls=None,
        finish_reason="",
        usage=None,
        error="",
    ):
        """Store how the reply ended: one UPDATE, guarded so a finished reply stays finished."""
        self.status = status
        self.content = content
        self.tool_calls = tool_calls or None
        self.finish_reason = finish_reason or ""
        self.prompt_tokens = usage.prompt_tokens if usage else None
        self.completion_tokens = usage.completion_tokens if usage else None
        self.total_tokens = usage.total_tokens if usage else None
        self.error = error
        self.finished_at = timezone.now()
        fields = [
            "status",
            "content",
            "tool_calls",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "error",
            "finished_at",
        ]
        Message.objects.filter(pk=self.pk, status=self.Status.STREAMING).update(
            **{name: getattr(self, name) for name in fields}
        )

    def checkpoint(self, content: str) -> None:
        """Save the text so far while streaming; also shows the reply task is alive."""
        self.content = content
        self.checkpoint_at = timezone.now()
        Message.objects.filter(pk=self.pk, status=self.Status.STREAMING).update(
            content=content, checkpoint_at=self.checkpoint_at
        )

    def reopen(self) -> bool:
        """Put an ended reply back to streaming, to continue it. False if it changed meanwhile.

        Raises IntegrityError when another reply of the conversation is streaming.
        """
        now = timezone.now()
        reopened = Message.objects.filter(pk=self.pk, status=self.status).update(
            status=self.Status.STREAMING, error="", finished_at=None, checkpoint_at=now
        )
        if reopened:
            self.status, self.error, self.finished_at = self.Status.STREAMING, "", None
            self.checkpoint_at = now
        return bool(reopened)

    @property
    def can_continue(self) -> bool:
        """A reply that ended early can be continued where it stopped."""
        if self.role != self.Role.ASSISTANT or not self.content:
            return False
        early = self.status in (self.Status.INTERRUPTED, self.Status.STOPPED)
        return early or self.finish_reason == "length"

    def to_openai(self) -> dict:
        return {"role": self.role, "content": self.content}
