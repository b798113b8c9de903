import math
import re
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.urls import reverse
from django.utils import timezone

from . import endpoints
from .demo import DEMO_LABEL, DEMO_MODEL
from .endpoints import Endpoint
from .page import MessageIds

BUSY = (
    "A reply is still being written in this conversation. "
    "Wait for it to finish or stop it, then send again."
)
CONTINUE_INSTRUCTION = (
    "Continue your previous reply exactly where it stopped. "
    "Do not repeat anything you already wrote."
)


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class ActionRefused(Exception):
    """An action that cannot apply; its text is shown to the user."""


class ReplyInProgress(ActionRefused):
    def __init__(self, message: str = BUSY):
        super().__init__(message)


@dataclass
class StartedReply:
    """A reply row that is now streaming, and what its page and its request need."""

    reply: "Message"
    prompt: list[dict]
    added: list["Message"] = field(default_factory=list)  # new on the page: [sent, reply]
    removed: list[int] = field(default_factory=list)  # off the page now (regenerate, edit)
    retitled: "Conversation | None" = None  # the conversation, when its title was just set
    tools: "ToolPolicy" = field(default_factory=lambda: ToolPolicy())  # which it may call
    parameters: dict = field(default_factory=dict)  # sent with each of its requests


def model_label(name: str) -> str:
    """How the UI names a model; the bundled demo is never passed off as a language model."""
    name = name or settings.CHAT_MODEL
    if not settings.OPENAI_BASE_URL and name in ("", DEMO_MODEL):
        return DEMO_LABEL
    return name or "the server's default model"


class ConversationQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)

    def listed_for(self, user, page: int = 1, per_page: int = 50) -> tuple[list, bool]:
        """A page of the sidebar's list (pinned first, then newest activity first), and
        whether more follow."""
        start = (page - 1) * per_page
        ordered = self.owned_by(user).order_by("-pinned", "-updated_at", "-pk")
        rows = list(ordered[start : start + per_page + 1])
        return rows[:per_page], len(rows) > per_page

    # Reviewing (the admin). Per-conversation figures are correlated subqueries, not a
    # join with GROUP BY, so a filter or search that joins messages cannot multiply them.

    def with_usage(self):
        """Annotate ``message_count`` and the ``prompt/completion/total_tokens`` sums."""
        return self.annotate(
            message_count=_over_messages(Count("pk")),
            prompt_tokens=_over_messages(Sum("prompt_tokens")),
            completion_tokens=_over_messages(Sum("completion_tokens")),
            total_tokens=_over_messages(Sum("total_tokens")),
        )

    def with_activity(self):
        """Annotate ``last_activity`` (latest message, else creation) and ``last_reply_status``."""
        latest = Message.objects.filter(conversation=OuterRef("pk")).order_by("-pk")
        return self.annotate(
            last_activity=Coalesce(Subquery(latest.values("created_at")[:1]), F("created_at")),
            last_reply_status=Subquery(
                latest.filter(role=Message.Role.ASSISTANT).values("status")[:1]
            ),
        )

    def with_reply_status(self, *statuses):
        """Conversations with at least one reply in one of ``statuses``."""
        replies = Message.objects.filter(
            conversation=OuterRef("pk"), role=Message.Role.ASSISTANT, status__in=statuses
        )
        return self.filter(Exists(replies))

    def search(self, terms):
        """Conversations with every term in the title, the owner's username or a message.

        Messages are searched through EXISTS, so no conversation comes twice.
        """
        found = self
        for term in terms:
            in_messages = Message.objects.filter(
                conversation=OuterRef("pk"), content__icontains=term
            )
            found = found.filter(
                Q(title__icontains=term) | Q(owner__username__icontains=term) | Exists(in_messages)
            )
        return found


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    pinned = models.BooleanField(default=False, help_text="Kept at the top of its owner's list.")
    # The model wrote the title (conversations/titles.py), in place of the first words.
    title_generated = models.BooleanField(default=False)
    model = models.CharField(max_length=200, blank=True, help_text="Model name sent upstream.")
    system_prompt = models.TextField(blank=True)
    # Sampling parameters sent with every request; empty leaves the server's default.
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    # The tools its owner switched off for it (their names as offered to the model).
    disabled_tools = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent")]
        permissions = [("review_conversation", "Can review other people's conversations")]

    def __str__(self):
        return self.title or f"Conversation {self.pk}"

    # The session key of the settings chosen for a conversation not stored yet (a preset,
    # the Settings form): a conversation is stored with its first message, not before.
    DRAFT = "new_conversation"

    def get_absolute_url(self):
        if self.pk is None:
            return reverse("conversation-new")
        return reverse("conversation-detail", args=[self.pk])

    @property
    def websocket_path(self) -> str:
        return f"/ws/conversations/{self.pk or 'new'}/"

    @classmethod
    def drafted(cls, owner, draft: dict | None) -> "Conversation":
        """A conversation not stored yet, with the settings chosen for it."""
        fields = {name: value for name, value in (draft or {}).items() if name in Preset.FIELDS}
        return cls(owner=owner, **fields)

    @classmethod
    def start(cls, owner, draft: dict | None, content, default_model: str) -> StartedReply:
        """Store a new conversation with its first message and the reply's row, together:
        a message that is refused stores nothing."""
        content = checked_content(content)
        conversation = cls.drafted(owner, draft)
        return conversation.send(content, default_model)

    @property
    def display_title(self) -> str:
        return self.title or "New conversation"

    @property
    def model_label(self) -> str:
        return model_label(endpoints.parse_choice(self.model)[1])

    MAX_TOOL_NAMES = 1000

    def parameters(self) -> dict:
        """What its requests carry besides the messages: the parameters that are set."""
        values = {"temperature": self.temperature, "top_p": self.top_p}
        values["max_tokens"] = self.max_tokens
        return {name: value for name, value in values.items() if value is not None}

    def tools(self) -> "ToolPolicy":
        """Which tools its replies offer (as stored when it was last read), and which ask."""
        switched_off = frozenset(n for n in self.disabled_tools or [] if isinstance(n, str))
        return ToolPolicy(switched_off, {(t.server, t.tool): t for t in ToolSetting.objects.all()})

    def switch_tools(self, listed, on) -> None:
        """Of the tools ``listed`` on its page, those not ``on`` are switched off for this
        conversation; tools not listed keep their setting (their server may be away)."""
        listed = {n for n in listed[: self.MAX_TOOL_NAMES] if isinstance(n, str) and len(n) <= 200}
        on = {n for n in on if isinstance(n, str)}
        kept = [n for n in self.disabled_tools or [] if isinstance(n, str) and n not in listed]
        self.disabled_tools = sorted({*kept, *(listed - on)})[: self.MAX_TOOL_NAMES]
        self.save(update_fields=["disabled_tools"])

    def export(self) -> dict:
        """The conversation as a JSON-ready document: every stored field of every message.

        Owners appear by id and username only. Usage is summed over the messages
        (prefetch them when exporting many conversations).
        """
        messages = list(self.messages.all())

        def total(field):
            values = [getattr(m, field) for m in messages if getattr(m, field) is not None]
            return sum(values)

        fields = [f.attname for f in Message._meta.concrete_fields if f.name != "conversation"]
        return {
            "id": self.pk,
            "title": self.title,
            "owner": {"id": self.owner_id, "username": self.owner.get_username()},
            "model": self.model,
            "system_prompt": self.system_prompt,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "usage": {
                "messages": len(messages),
                "prompt_tokens": total("prompt_tokens"),
                "completion_tokens": total("completion_tokens"),
                "total_tokens": total("total_tokens"),
            },
            "messages": [{name: getattr(m, name) for name in fields} for m in messages],
            # The messages on the conversation's page; the others are earlier versions.
            "branch": [m.pk for m in branch_of(messages)],
        }

    def branch(self) -> list["Message"]:
        """The messages on screen, in order: from the first, each message's child chosen
        last. Each carries its ``versions`` (the turn's other versions). One query."""
        return branch_of(self.messages.all())

    def prompt(
        self, branch=None, continuing: "Message | None" = None, *, reasoning: bool = False
    ) -> list[dict]:
        """The messages sent upstream for the reply after ``branch`` (the one on screen if
        None), or to carry ``continuing`` on: the system prompt, then the branch's finished
        messages (with their reasoning when the reply's server wants it back)."""
        branch = self.branch() if branch is None else branch
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        history = [part for m in branch if m.belongs_in_prompt for part in m.to_openai(reasoning)]
        if continuing is not None:
            # The history leaves out streaming rows, so the text so far is added back here.
            history.extend(continuing.to_openai(reasoning))
            history.append({"role": "user", "content": CONTINUE_INSTRUCTION})
        return system + history

    # --- starting a reply: each stores a streaming row; the database's one-streaming-reply
    # constraint decides races between tabs and processes, and the loser stores nothing.

    def send(self, content, default_model: str) -> StartedReply:
        """Store the user's message, after the branch on screen, and the reply's row
        (status streaming) together.

        The reply is written by the conversation's model, else ``default_model``.
        """
        content = checked_content(content)
        now = timezone.now()
        new = self._state.adding  # a conversation not stored yet (``start``)
        try:
            with transaction.atomic():
                if new:
                    branch = []
                else:
                    self.refresh_from_db()
                    branch = self.branch()
                self.admit_reply()
                model = self.model or default_model
                self.updated_at = now
                fields = ["updated_at"]
                retitled = not self.title  # the first message names the conversation
                if retitled:
                    self.title = " ".join(content.split())[:80]
                    fields.append("title")
                if not self.model:
                    self.model = model
                    fields.append("model")
                if new:
                    self.save(force_insert=True)  # stored with its title, model and time
                else:
                    self.save(update_fields=fields)
                sent = self._new_message(content, branch[-1] if branch else None, now)
                reply = self._new_reply(model, sent, now)
                prompt = self.prompt([*branch, sent], reasoning=reply.sends_reasoning)
        except IntegrityError as error:
            raise ReplyInProgress from error
        sent.versions = Versions.only(sent)
        reply.versions = Versions.only(reply)
        retitled = self if retitled else None
        return StartedReply(
            reply,
            prompt,
            [sent, reply],
            retitled=retitled,
            tools=self.tools(),
            parameters=self.parameters(),
        )

    def regenerate(self, message_id, default_model: str) -> StartedReply:
        """Start another version of a reply on the branch, from the same history; the
        earlier versions are kept (Previous version shows them)."""
        return self._new_version(message_id, Message.Role.ASSISTANT, default_model)

    def edit(self, message_id, content, default_model: str) -> StartedReply:
        """Send an edited version of one of the branch's user messages: a new branch from
        there, with a new reply; the original stays a version of the turn."""
        content = checked_content(content)
        return self._new_version(message_id, Message.Role.USER, default_model, content)

    def _new_version(self, message_id, role, default_model: str, content=None) -> StartedReply:
        self.refresh_from_db()
        now = timezone.now()
        try:
            with transaction.atomic():
                branch = self.branch()
                at = _index_of(branch, message_id)
                if at is None:
                    raise ActionRefused("That message is not in this conversation any more.")
                if branch[at].role != role:
                    raise ActionRefused(
                        "Only replies can be regenerated."
                        if role == Message.Role.ASSISTANT
                        else "Only your own messages can be edited."
                    )
                if any(m.is_streaming for m in branch):
                    raise ReplyInProgress
                self.admit_reply()
                old, history = branch[at], branch[:at]
                parent = history[-1] if history else None
                added = []
                if content is not None:  # an edit: the new message, then its reply
                    parent = self._new_message(content, parent, now)
                    added.append(parent)
                    history = [*history, parent]
                reply = self._new_reply(self.model or default_model, parent, now)
                added.append(reply)
                self.updated_at = now
                self.save(update_fields=["updated_at"])
                prompt = self.prompt(history, reasoning=reply.sends_reasoning)
                versions = old.versions.count + 1
        except IntegrityError as error:
            raise ReplyInProgress from error
        added[0].versions = Versions(
            versions, versions, previous=old.versions.last_pk, last_pk=added[0].pk
        )
        if reply is not added[0]:  # an edit's reply is the first of its turn
            reply.versions = Versions.only(reply)
        return StartedReply(
            reply,
            prompt,
            added,
            removed=[m.pk for m in branch[at:]],
            tools=self.tools(),
            parameters=self.parameters(),
        )

    def resume(self, message_id) -> StartedReply:
        """Carry an interrupted, stopped or length-cut reply at the end of the branch on,
        in the same message."""
        self.refresh_from_db()
        branch = self.branch()
        reply = branch[-1] if branch else None
        if reply is None or reply.pk != message_id or reply.role != Message.Role.ASSISTANT:
            raise ActionRefused("Only the latest reply can be continued.")
        if reply.is_streaming:
            raise ReplyInProgress
        if not reply.can_continue:
            raise ActionRefused("This reply is complete; there is nothing to continue.")
        if reply.endpoint_name and (reply.endpoint is None or not reply.endpoint.enabled):
            raise ActionRefused(
                "The server that wrote this reply is no longer offered: regenerate it with "
                "another model instead."
            )
        try:
            with transaction.atomic():
                self.admit_reply()
                if not reply.reopen():
                    raise ReplyInProgress
        except IntegrityError as error:
            raise ReplyInProgress from error
        return StartedReply(
            reply,
            self.prompt(branch[:-1], continuing=reply, reasoning=reply.sends_reasoning),
            tools=self.tools(),
            parameters=self.parameters(),
        )

    def switch_version(self, message_id) -> "BranchSwitch":
        """Show another version of a turn (and below it, the branch chosen there last).
        Refused while a reply is being written: its branch must stay on screen."""
        with transaction.atomic():
            messages = list(self.messages.select_for_update())
            target = next((m for m in messages if m.pk == message_id), None)
            if target is None:
                raise ActionRefused("That version is not in this conversation any more.")
            if any(m.is_streaming for m in messages):
                raise ActionRefused(
                    "A reply is being written: switch versions once it ends (or stop it)."
                )
            before = branch_of(messages)
            target.chosen_at = timezone.now()
            Message.objects.filter(pk=target.pk).update(chosen_at=target.chosen_at)
            after = branch_of(messages)
        kept = 0
        while kept < min(len(before), len(after)) and before[kept].pk == after[kept].pk:
            kept += 1
        return BranchSwitch(removed=[m.pk for m in before[kept:]], added=after[kept:])

    def admit_reply(self) -> None:
        """Record a reply about to start, or refuse it past the owner's limits: upstream
        requests a minute (sending, regenerating and continuing each make one) and replies
        being written at once. Counted in the database, so across processes; called inside
        the transaction that starts the reply, so a refused start records nothing."""
        wait = UpstreamRequest.wait_for(self.owner_id)
        if wait:
            most = settings.CHAT_MESSAGES_PER_MINUTE
            raise ActionRefused(
                f"You can ask for {most} replies a minute (sending, regenerating, continuing "
                f"and each tool round count). Try again in {wait} s."
            )
        writing = Message.objects.filter(conversation__owner_id=self.owner_id).streaming().count()
        if writing >= settings.CHAT_CONCURRENT_REPLIES:
            raise ActionRefused(
                f"You already have {writing} replies being written, the most at once. "
                "Wait for one to finish (or stop one), then try again."
            )
        UpstreamRequest.objects.create(user_id=self.owner_id)

    @classmethod
    def admit_tool_round(cls, conversation_id: int) -> None:
        """Record the request that carries a reply on after its tool calls, or refuse it
        past the owner's per-minute limit (the calls' results are kept: Continue sends them)."""
        owner_id = cls.objects.filter(pk=conversation_id).values_list("owner_id", flat=True)[0]
        wait = UpstreamRequest.record(owner_id)
        if wait:
            most = settings.CHAT_MESSAGES_PER_MINUTE
            raise ActionRefused(
                f"The tools answered, but you have reached {most} requests to the model "
                f"a minute (each tool round counts). Continue in {wait} s to let the "
                "model read their results."
            )

    def _new_message(self, content: str, parent: "Message | None", now) -> "Message":
        message = Message(
            conversation=self,
            role=Message.Role.USER,
            content=content,
            status=Message.Status.COMPLETE,
            parent=parent,
            created_at=now,
            chosen_at=now,
            finished_at=now,
        )
        message.first_of_branch = parent is None
        message.save(force_insert=True)
        return message

    def _new_reply(self, chosen: str, parent: "Message", now) -> "Message":
        """The reply's streaming row, for the ``chosen`` model (an ``endpoints.choice``)."""
        endpoint_id, model = endpoints.parse_choice(chosen)
        endpoint = None
        if endpoint_id is not None:
            endpoint = Endpoint.objects.filter(pk=endpoint_id, enabled=True).first()
            if endpoint is None:
                raise ActionRefused(
                    "The server of this conversation's model is no longer offered: choose "
                    "another model in Settings."
                )
        return self.messages.create(
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            model=model,
            endpoint=endpoint,
            endpoint_name=endpoint.name if endpoint else "",
            parent=parent,
            created_at=now,
            chosen_at=now,
            checkpoint_at=now,
        )

    def sync_state(self, since: int, shown: list[int]) -> "SyncState":
        """What a page that shows ``shown`` (its last 1000 message ids; ``since`` the
        greatest) lacks, against the branch on screen now."""
        branch = self.branch()
        on_branch, shown_ids = {m.pk for m in branch}, set(shown)
        # The page keeps the branch up to its last message still on it, and lacks the rest.
        # (A page that names no messages shows the branch up to ``since``.)
        kept = [m for m in branch if (m.pk in shown_ids if shown else m.pk <= since)]
        last = kept[-1] if kept else None
        after = last.pk if last is not None else 0
        return SyncState(
            newer=[m for m in branch if m.pk > after],
            last_finished=last if last is not None and not last.is_streaming else None,
            streaming=[m.pk for m in branch if m.is_streaming],
            gone=[message_id for message_id in shown if message_id not in on_branch],
        )


@dataclass
class SyncState:
    newer: list["Message"]  # messages after the page's last one
    last_finished: "Message | None"  # the page's last message, final (it may have ended)
    streaming: list[int]  # replies being written: the page needs snapshots
    gone: list[int]  # messages of the page off the branch now (deleted, or another version)


@dataclass
class BranchSwitch:
    """The page's change when another version is shown: turns off, then turns on."""

    removed: list[int]
    added: list["Message"]


@dataclass(frozen=True)
class Versions:
    """Where a message stands among the versions of its turn (its parent's children)."""

    index: int  # from 1
    count: int
    previous: int | None = None  # the version before it, to switch to
    next: int | None = None
    last_pk: int | None = None  # the newest version

    @classmethod
    def only(cls, message: "Message") -> "Versions":
        return cls(1, 1, last_pk=message.pk)


def branch_of(messages) -> list["Message"]:
    """The branch shown among ``messages`` (one conversation's): from the first message,
    each one's child chosen last; each with its ``versions`` set."""
    children: dict[int | None, list[Message]] = {}
    for message in sorted(messages, key=lambda m: m.pk):
        children.setdefault(message.parent_id, []).append(message)
    branch, parent = [], None
    while versions := children.get(parent):
        chosen = max(versions, key=lambda m: (m.chosen_at, m.pk))
        at = versions.index(chosen)
        chosen.versions = Versions(
            at + 1,
            len(versions),
            previous=versions[at - 1].pk if at > 0 else None,
            next=versions[at + 1].pk if at + 1 < len(versions) else None,
            last_pk=versions[-1].pk,
        )
        branch.append(chosen)
        parent = chosen.pk
    return branch


def tree_of(messages) -> list["Message"]:
    """Every message of one conversation, each turn's versions together and each version
    followed by what came after it (depth first); each with its ``versions`` and whether
    it is ``on_branch`` (shown on the conversation's page)."""
    messages = sorted(messages, key=lambda m: m.pk)
    shown = {m.pk for m in branch_of(messages)}
    children: dict[int | None, list[Message]] = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message)
    ordered, pending = [], list(reversed(children.get(None, [])))
    while pending:
        message = pending.pop()
        versions = children[message.parent_id]
        at = versions.index(message)
        message.versions = Versions(at + 1, len(versions), last_pk=versions[-1].pk)
        message.on_branch = message.pk in shown
        ordered.append(message)
        pending.extend(reversed(children.get(message.pk, [])))
    return ordered


def _index_of(branch: list["Message"], message_id) -> int | None:
    return next((i for i, m in enumerate(branch) if m.pk == message_id), None)


def checked_content(content) -> str:
    """A message's text as typed, or ActionRefused with what is wrong."""
    if not isinstance(content, str) or not content.strip():
        raise ActionRefused("Type a message first.")
    # A lone surrogate or a NUL (possible in JSON escapes) cannot be stored.
    content = UNSTORABLE.sub("\ufffd", content)
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise ActionRefused(
            f"Your message is {len(content):,} characters long; the limit is {limit:,}. "
            "Nothing was sent."
        )
    return content


def _over_messages(aggregate):
    """``aggregate`` over the messages of the outer conversation, as a subquery (0 if none)."""
    per_conversation = (
        Message.objects.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(value=aggregate)
        .values("value")
    )
    return Coalesce(Subquery(per_conversation), 0)


def _usage() -> dict:
    """The figures of a usage report, as aggregates over messages."""
    return {
        "sent": Count("pk", filter=Q(role=Message.Role.USER)),
        "replies": Count("pk", filter=Q(role=Message.Role.ASSISTANT)),
        "prompt": Coalesce(Sum("prompt_tokens"), 0),
        "completion": Coalesce(Sum("completion_tokens"), 0),
        "tokens": Coalesce(Sum("total_tokens"), 0),
        "failed": Count("pk", filter=Q(status=Message.Status.FAILED)),
        "interrupted": Count("pk", filter=Q(status=Message.Status.INTERRUPTED)),
    }


class MessageQuerySet(models.QuerySet):
    def streaming(self):
        return self.filter(status=Message.Status.STREAMING)

    # Usage reports (the admin's overview): aggregated in the database, one row per group.

    def created_between(self, start, end):
        """Messages created in [start, end)."""
        return self.filter(created_at__gte=start, created_at__lt=end)

    def usage_totals(self) -> dict:
        return self.aggregate(**_usage())

    def usage_per_day(self):
        """One row per day (in the current time zone) that has messages."""
        return (
            self.annotate(day=TruncDate("created_at"))
            .values("day")
            .annotate(**_usage())
            .order_by("day")
        )

    def usage_per_user(self):
        return (
            self.values(
                owner_id=F("conversation__owner_id"),
                username=F("conversation__owner__username"),
            )
            .annotate(conversations=Count("conversation", distinct=True), **_usage())
            .order_by("-tokens", "username")
        )

    def usage_per_model(self):
        """Per model that replied (user messages name no model)."""
        return (
            self.filter(role=Message.Role.ASSISTANT)
            .values("model")
            .annotate(**_usage())
            .order_by("-tokens", "model")
        )

    def orphaned(self, *, running=(), stale_after: float = 0.0, older_than=None):
        """Streaming rows whose reply task is gone: not running here, and no checkpoint
        for ``stale_after`` seconds (or none since ``older_than``)."""
        cutoff = timezone.now() - timedelta(seconds=stale_after)
        if older_than is not None:
            cutoff = max(cutoff, older_than)
        return (
            self.streaming()
            .exclude(pk__in=list(running))
            .filter(Q(checkpoint_at__lte=cutoff) | Q(checkpoint_at__isnull=True))
        )

    def link_in_order(self) -> None:
        """Make these messages (bulk-created: ``save`` did not link them) one branch per
        conversation: each follows the one before it, in order of creation."""
        changed, previous = [], (None, None)
        rows = self.order_by("conversation_id", "pk").only("pk", "conversation_id", "parent_id")
        for message in rows:
            if previous[1] == message.conversation_id and message.parent_id is None:
                message.parent_id = previous[0]
                changed.append(message)
            previous = (message.pk, message.conversation_id)
        self.model.objects.bulk_update(changed, ["parent"], batch_size=2000)

    def interrupt(self, error: str) -> int:
        """End streaming rows as interrupted, keeping their (checkpointed) text."""
        return self.streaming().update(
            status=Message.Status.INTERRUPTED, error=error, finished_at=timezone.now()
        )


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
    # A reasoning model's thinking: shown above the answer, never sent back upstream.
    reasoning = models.TextField(blank=True)
    reasoning_seconds = models.FloatField(null=True, blank=True)
    tool_calls = models.JSONField(null=True, blank=True)  # asked for, and not run
    # The tool rounds of a reply, in order: where its text stood when each round's calls
    # were asked for ("text_end"), and each call with its arguments, state and result
    # (see Reply.begin_round and tool_round_messages).
    tool_rounds = models.JSONField(null=True, blank=True)
    # Versions: a message follows its parent (null for the first); the children of one
    # parent are the versions of one turn (a regenerated reply, an edited message). The
    # branch on screen takes, from each message, the child chosen last.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    chosen_at = models.DateTimeField(default=timezone.now)
    finish_reason = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    # The server that wrote it: an admin's endpoint (its name kept should it be deleted),
    # or none for the default server.
    endpoint = models.ForeignKey(
        Endpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    endpoint_name = models.CharField(max_length=100, blank=True)
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

    def save(self, *args, **kwargs):
        # A message added without a parent follows the branch on screen, unless it is a
        # first message (``first_of_branch``: the conversation's first, or a version of it).
        if self._state.adding and self.parent_id is None and not self.first_of_branch:
            branch = branch_of(Message.objects.filter(conversation_id=self.conversation_id))
            self.parent = branch[-1] if branch else None
        super().save(*args, **kwargs)

    first_of_branch = False
    versions = None  # set by branch_of: where the message stands among its turn's versions

    @property
    def ids(self) -> MessageIds:
        return MessageIds(self.pk)

    @property
    def model_label(self) -> str:
        label = model_label(self.model)
        return f"{label} · {self.endpoint_name}" if self.endpoint_name else label

    @property
    def sends_reasoning(self) -> bool:
        """Whether the server writing this reply wants earlier reasoning back: its
        endpoint's option, CHAT_SEND_REASONING for the default server."""
        if self.endpoint_id is not None:
            return self.endpoint.send_reasoning
        return settings.CHAT_SEND_REASONING

    @property
    def is_streaming(self) -> bool:
        return self.status == self.Status.STREAMING

    @property
    def is_thinking(self) -> bool:
        """Reasoning, and no answer yet: the reasoning block is open while this lasts."""
        return self.is_streaming and bool(self.reasoning) and not self.content

    def finish(
        self,
        *,
        status,
        content,
        reasoning="",
        reasoning_seconds=None,
        tool_calls=None,
        tool_rounds=None,
        finish_reason="",
        usage=None,
        error="",
    ):
        """Store how the reply ended: one UPDATE, guarded so a finished reply stays finished."""
        self.status = status
        self.content = content
        self.reasoning = reasoning
        self.reasoning_seconds = reasoning_seconds
        self.tool_calls = tool_calls or None
        self.tool_rounds = tool_rounds or None
        self.finish_reason = (finish_reason or "")[
            : Message._meta.get_field("finish_reason").max_length
        ]
        self.prompt_tokens = usage.prompt_tokens if usage else None
        self.completion_tokens = usage.completion_tokens if usage else None
        self.total_tokens = usage.total_tokens if usage else None
        self.reasoning_tokens = usage.reasoning_tokens if usage else None
        self.error = error
        self.finished_at = timezone.now()
        fields = [
            "status",
            "content",
            "reasoning",
            "reasoning_seconds",
            "reasoning_tokens",
            "tool_calls",
            "tool_rounds",
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

    def save_tool_rounds(self, content: str, tool_rounds: list[dict]) -> None:
        """Store the text and tool rounds so far, before and after each call runs: a reload
        shows them, and a call is never run again."""
        Message.objects.filter(pk=self.pk, status=self.Status.STREAMING).update(
            content=content, tool_rounds=tool_rounds, checkpoint_at=timezone.now()
        )

    @classmethod
    def checkpoint_many(cls, saves) -> None:
        """Save (message, content, reasoning) of many streaming replies: one UPDATE, run for
        each row (``executemany``). The ORM's ``bulk_update`` builds a CASE expression per
        column and row: about 1.4 ms of CPU a row, every interval, for 100 replies."""
        now = timezone.now()
        connection = connections[router.db_for_write(cls)]
        stamp = connection.ops.adapt_datetimefield_value(now)
        rows = []
        for message, content, reasoning in saves:
            message.content, message.reasoning, message.checkpoint_at = content, reasoning, now
            rows.append((content, reasoning, stamp, message.pk, cls.Status.STREAMING))
        name = connection.ops.quote_name
        content, reasoning, at, pk, status = (
            name(cls._meta.get_field(field).column)
            for field in ("content", "reasoning", "checkpoint_at", "id", "status")
        )
        sql = (
            f"UPDATE {name(cls._meta.db_table)} SET {content} = %s, {reasoning} = %s, "
            f"{at} = %s WHERE {pk} = %s AND {status} = %s"
        )
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.executemany(sql, rows)

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
    def belongs_in_prompt(self) -> bool:
        """Finished, with text or tool rounds. Calls that were asked for and not run are
        not sent back: an assistant message with tool calls but no tool results is refused
        by OpenAI-compatible servers."""
        return not self.is_streaming and bool(self.content or self.tool_rounds)

    @property
    def can_continue(self) -> bool:
        """A reply that ended early can be continued where it stopped."""
        if self.role != self.Role.ASSISTANT or not (self.content or self.tool_rounds):
            return False
        early = self.status in (self.Status.INTERRUPTED, self.Status.STOPPED)
        return early or self.finish_reason == "length"

    def to_openai(self, reasoning: bool = False) -> list[dict]:
        """The message in a request: one, or for a reply with tool rounds, each round's
        assistant message with its calls and one tool message per call, then the rest.

        Reasoning stays out (models imitate it), unless the server wants it back
        (``reasoning``: see ``sends_reasoning``).
        """
        tail = self._openai_tail(reasoning)
        return tool_round_messages(self.content, self.tool_rounds or [], tail)

    def _openai_tail(self, reasoning: bool) -> dict:
        message = {"role": self.role, "content": self.content}
        if self.reasoning and reasoning:
            message["reasoning_content"] = self.reasoning
        return message


def tool_round_messages(text: str, rounds: list[dict], tail: dict | None, start: int = 0):
    """OpenAI messages of a reply's ``text`` (from ``start``) with its tool ``rounds``.

    Each round is the assistant message that asked for its calls, then one tool message
    per call. ``tail`` (a message dict of the whole reply) carries the text after the
    last round, if there is some; None leaves it out (the reply is still being written).
    """
    messages = []
    for round_ in rounds:
        end = round_["text_end"]
        calls = round_["calls"]
        messages.append(
            {
                "role": "assistant",
                "content": text[start:end].strip() or None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                    for call in calls
                ],
            }
        )
        messages.extend(
            {"role": "tool", "tool_call_id": call["id"], "content": tool_result_text(call)}
            for call in calls
        )
        start = end
    if tail is not None and (not rounds or text[start:].strip()):
        messages.append({**tail, "content": text[start:].lstrip() if rounds else text[start:]})
    return messages


# What the model is told of a call that did not answer (by the state it was left in).
TOOL_CALL_ENDED_EARLY = {
    "asked": "The call was not run: the reply ended before it could be.",
    "waiting": "The call was not run: the reply ended before the user allowed it.",
    "not_run": "The call was not run: the reply ended before it could be.",
    "denied": "The user denied this tool call; it was not run.",
    "running": (
        "The call was interrupted before it answered; it may or may not have taken effect."
    ),
    "interrupted": (
        "The call was interrupted before it answered; it may or may not have taken effect."
    ),
    "stopped": (
        "The user stopped the reply while the call ran; it may or may not have taken effect."
    ),
}


def tool_result_text(call: dict) -> str:
    """What the model is told a call returned."""
    state = call.get("state", "")
    if state in TOOL_CALL_ENDED_EARLY:
        return TOOL_CALL_ENDED_EARLY[state]
    result = call.get("result", "")
    if state == "error":
        return f"Error: {result}" if result else "Error: the tool failed."
    return result


class UpstreamRequest(models.Model):
    """A reply a user's action started upstream: what the per-minute limit counts."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["user", "at"], name="upstream_request_user_at")]

    def __str__(self):
        return f"upstream request of user {self.user_id} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def record(cls, user_id: int) -> int:
        """Record a request of ``user_id``, and answer 0; past their per-minute limit,
        record nothing and answer the seconds to wait."""
        with transaction.atomic():
            wait = cls.wait_for(user_id)
            if not wait:
                cls.objects.create(user_id=user_id)
        return wait

    @classmethod
    def wait_for(cls, user_id: int) -> int:
        """0 when ``user_id`` may make another request now, else the seconds to wait."""
        now, window = timezone.now(), timedelta(minutes=1)
        most = settings.CHAT_MESSAGES_PER_MINUTE
        recent = cls.objects.filter(user_id=user_id, at__gt=now - window).order_by("-at")
        # The most-th newest request of the last minute, if there is one: one row read.
        oldest = recent.values_list("at", flat=True)[most - 1 : most].first()
        if oldest is None:
            return 0
        return max(1, math.ceil((oldest + window - now).total_seconds()))


class AdminAccessRecordQuerySet(models.QuerySet):
    def record(self, staff, conversations, action) -> list["AdminAccessRecord"]:
        """Note that ``staff`` opened or exported those of ``conversations`` they do not own.

        The conversations need their owner loaded (``select_related("owner")``).
        """
        return self.bulk_create(
            AdminAccessRecord(
                staff=staff,
                staff_username=staff.get_username(),
                action=action,
                conversation=conversation,
                conversation_title=str(conversation)[:200],
                conversation_owner=conversation.owner.get_username(),
            )
            for conversation in conversations
            if conversation.owner_id != staff.pk
        )


class AdminAccessRecord(models.Model):
    """A staff member opened or exported someone else's conversation in the admin.

    The usernames and the title are copied, so the record still says who read what
    after the user or the conversation is deleted.
    """

    class Action(models.TextChoices):
        OPENED = "opened"
        EXPORTED = "exported"
        LISTED = "listed"  # excerpts of its messages in the message list or its search

    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        related_name="admin_access_records",
    )
    staff_username = models.CharField(max_length=150)
    action = models.CharField(max_length=16, choices=Action.choices)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.SET_NULL, null=True, related_name="access_records"
    )
    conversation_title = models.CharField(max_length=200)
    conversation_owner = models.CharField(max_length=150)
    accessed_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = AdminAccessRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-accessed_at", "-pk"]
        indexes = [models.Index(fields=["accessed_at"], name="admin_access_accessed")]

    def __str__(self):
        return f"{self.staff_username} {self.action} {self.conversation_title!r}"


class LoginFailure(models.Model):
    """A failed login (or one being checked), counted against an account or an address.

    Each attempt at a password stores one row per scope before the password is checked
    (see conversations.throttling); a success deletes the account's rows, a refusal its
    own. Rows older than the window are pruned as failures are recorded.
    """

    class Scope(models.TextChoices):
        ACCOUNT = "account"  # the username, case-folded
        ADDRESS = "address"  # the client address (an IPv6 address's /64)

    scope = models.CharField(max_length=8, choices=Scope.choices)
    key = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        indexes = [
            # The check: the rows of one account or one address within the window.
            models.Index(fields=["scope", "key", "created_at"], name="login_failure_lookup"),
            # Pruning the rows older than the window.
            models.Index(fields=["created_at"], name="login_failure_created"),
        ]

    def __str__(self):
        return f"{self.scope} {self.key} at {self.created_at:%Y-%m-%d %H:%M:%S}"


@dataclass(frozen=True)
class ToolPolicy:
    """Which tools a reply offers, and which of them ask the user before they run."""

    switched_off: frozenset[str] = frozenset()  # function names, by the conversation's owner
    settings: dict = field(default_factory=dict)  # (server, tool) -> ToolSetting

    @classmethod
    def for_conversation(cls, conversation_id: int) -> "ToolPolicy":
        return Conversation.objects.get(pk=conversation_id).tools()

    def offers(self, tool) -> bool:
        return self.site_offers(tool) and tool.function_name not in self.switched_off

    def site_offers(self, tool) -> bool:
        """Whether an administrator left the tool on."""
        row = self.settings.get((tool.server, tool.name))
        return row is None or row.enabled

    def asks(self, tool) -> bool:
        """A tool that may change things asks first, unless an administrator allowed it."""
        if tool.read_only:
            return False
        row = self.settings.get((tool.server, tool.name))
        return row is None or not row.allowed_without_asking


class Preset(models.Model):
    """A person's named instructions and parameters, to start conversations from."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presets"
    )
    name = models.CharField(max_length=100)
    model = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)

    FIELDS = ("model", "system_prompt", "temperature", "top_p", "max_tokens")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="one_preset_per_name")
        ]
        ordering = ["name"]

    def __str__(self):
        return self.name


class ToolSetting(models.Model):
    """An administrator's word on one tool of an MCP server: off, or allowed without asking.

    A tool with no row is on, and asks before it runs unless its server marks it read-only.
    """

    server = models.CharField(max_length=100)
    tool = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True, help_text="Offered to the model.")
    allowed_without_asking = models.BooleanField(
        default=False, help_text="Runs without asking the user, even if it may change things."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "tool"], name="one_setting_per_tool")
        ]
        ordering = ["server", "tool"]
        # The admin shows these rows on its page of the tool servers and their tools.
        verbose_name = "tool server"
        verbose_name_plural = "tool servers"

    def __str__(self):
        return f"{self.server} / {self.tool}"


class ConversationImport(models.Model):
    """A file of conversations being imported (conversations/imports.py): its progress,
    and once it ends, what it made or why it made nothing."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="imports"
    )
    file_name = models.CharField(max_length=255)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(null=True, blank=True)  # conversations in the file
    done = models.PositiveIntegerField(default=0)  # of them checked so far
    storing = models.BooleanField(default=False)  # all checked; being written
    error = models.TextField(blank=True)
    conversation_ids = models.JSONField(default=list, blank=True)  # what it made, in order
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"import of {self.file_name} ({self.status})"

    @property
    def is_over(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)

    def conversations(self):
        """What it made that still exists, in the file's order."""
        found = Conversation.objects.owned_by(self.owner_id).in_bulk(self.conversation_ids)
        return [found[pk] for pk in self.conversation_ids if pk in found]
