"""Reviewing conversations and token usage in the Django admin.

Conversations and messages are read-only for everyone: reviewers read what was
said, nobody rewrites it, and only superusers delete. Staff who are not
superusers need the ``conversations.review_conversation`` permission to see
them at all. Opening or exporting someone else's conversation leaves an
``AdminAccessRecord``, which only superusers can read.
"""

from datetime import timedelta

from django.contrib import admin
from django.contrib.admin.utils import display_for_value
from django.template.defaultfilters import linebreaksbr
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.text import Truncator, smart_split, unescape_string_literal

from . import admin_views
from .models import AdminAccessRecord, Conversation, Message, tree_of
from .rendering import render_markdown

REVIEW_PERMISSION = "conversations.review_conversation"


def message_body_html(message) -> str:
    """A message's text as safe HTML, as the site shows it.

    Replies go through the site's Markdown renderer and sanitizer; other messages are
    escaped, their line breaks kept as ``<br>`` (the admin has no pre-wrap CSS).
    """
    if message.role != Message.Role.ASSISTANT:
        return linebreaksbr(message.content, autoescape=True)
    answer = mark_safe(render_markdown(message.content))  # sanitized by the renderer
    if not message.reasoning:
        return answer
    seconds = message.reasoning_seconds
    return format_html(
        '<details class="reasoning" data-part="reasoning"><summary>{}</summary>{}</details>{}',
        f"Reasoning ({seconds:.0f} s)" if seconds is not None else "Reasoning",
        mark_safe(render_markdown(message.reasoning)),  # sanitized by the renderer
        answer,
    )


class ReviewOnlyAdmin(admin.ModelAdmin):
    """Visible with the review permission; never added or changed; deleted by superusers.

    Opening an object's page records access to the conversation it belongs to.
    """

    def has_review_permission(self, request):
        return request.user.has_perm(REVIEW_PERMISSION)

    def has_module_permission(self, request):
        return self.has_review_permission(request)

    def has_view_permission(self, request, obj=None):
        return self.has_review_permission(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def conversation_of(self, obj) -> Conversation:
        raise NotImplementedError

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and response.status_code == 200:
            conversation = self.conversation_of(response.context_data["original"])
            AdminAccessRecord.objects.record(
                request.user, [conversation], AdminAccessRecord.Action.OPENED
            )
        return response


# --- conversations -------------------------------------------------------------------


class LastReplyStatusFilter(admin.SimpleListFilter):
    title = "status of last reply"
    parameter_name = "last_reply"

    def lookups(self, request, model_admin):
        return [*Message.Status.choices, ("none", "No reply yet")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(last_reply_status__isnull=True)
        if self.value():
            return queryset.filter(last_reply_status=self.value())
        return queryset


class ProblemReplyFilter(admin.SimpleListFilter):
    title = "failed or interrupted replies"
    parameter_name = "problem"
    statuses = {
        "any": [Message.Status.FAILED, Message.Status.INTERRUPTED],
        "failed": [Message.Status.FAILED],
        "interrupted": [Message.Status.INTERRUPTED],
    }

    def lookups(self, request, model_admin):
        return [
            ("any", "Has a failed or interrupted reply"),
            ("failed", "Has a failed reply"),
            ("interrupted", "Has an interrupted reply"),
        ]

    def queryset(self, request, queryset):
        if self.value() in self.statuses:
            return queryset.with_reply_status(*self.statuses[self.value()])
        return queryset


class LastActivityFilter(admin.SimpleListFilter):
    title = "last activity"
    parameter_name = "active"
    periods = {"1": "Past 24 hours", "7": "Past 7 days", "30": "Past 30 days", "365": "Past year"}

    def lookups(self, request, model_admin):
        return list(self.periods.items())

    def queryset(self, request, queryset):
        if self.value() in self.periods:
            since = timezone.now() - timedelta(days=int(self.value()))
            return queryset.filter(last_activity__gte=since)
        return queryset


@admin.register(Conversation)
class ConversationAdmin(ReviewOnlyAdmin):
    list_display = [
        "display_title",
        "owner",
        "model",
        "message_count",
        "total_tokens",
        "last_activity",
        "last_reply_status",
    ]
    list_filter = [
        ("owner", admin.RelatedOnlyFieldListFilter),
        "model",
        LastActivityFilter,
        LastReplyStatusFilter,
        ProblemReplyFilter,
    ]
    # Searched by get_search_results (messages through EXISTS); listed here for the search box.
    search_fields = ["title", "owner__username", "messages__content"]
    search_help_text = "Finds conversations with every word in the title, a message or the owner."
    date_hierarchy = "created_at"
    fields = [
        "title",
        "owner",
        "model",
        "system_prompt",
        "created_at",
        "updated_at",
        "last_activity",
        "message_count",
        "usage",
        "last_reply_status",
    ]
    readonly_fields = fields
    actions = ["export_as_json"]
    view_on_site = False  # The site shows a conversation to its owner only.

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner").with_usage().with_activity()

    def get_search_results(self, request, queryset, search_term):
        # Terms as the admin's own search reads them: quotes keep a phrase together.
        terms = [
            unescape_string_literal(term) if term[0] in "\"'" and term[-1] == term[0] else term
            for term in smart_split(search_term)
        ]
        return queryset.search(terms), False

    @admin.display(description="title", ordering="title")
    def display_title(self, conversation):
        return str(conversation)

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, conversation):
        return conversation.message_count

    @admin.display(description="tokens", ordering="total_tokens")
    def total_tokens(self, conversation):
        return conversation.total_tokens

    @admin.display(ordering="last_activity")
    def last_activity(self, conversation):
        # Formatted here: the change view shows a method's value as plain text.
        return display_for_value(conversation.last_activity, self.get_empty_value_display())

    @admin.display(description="last reply", ordering="last_reply_status")
    def last_reply_status(self, conversation):
        if conversation.last_reply_status is None:
            return None
        return Message.Status(conversation.last_reply_status).label

    @admin.display(description="tokens used")
    def usage(self, conversation):
        return (
            f"{conversation.prompt_tokens} prompt + {conversation.completion_tokens} completion"
            f" = {conversation.total_tokens}"
        )

    def conversation_of(self, conversation):
        return conversation

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["transcript"] = [
                (message, message_body_html(message)) for message in tree_of(obj.messages.all())
            ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.action(description="Export selected conversations as JSON", permissions=["review"])
    def export_as_json(self, request, queryset):
        return admin_views.export_conversations(request, queryset)

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_usage"
        usage = path("usage/", self.admin_site.admin_view(self.usage_view), name=name)
        return [usage, *super().get_urls()]

    def usage_view(self, request):
        return admin_views.usage_overview(request, self)


# --- messages --------------------------------------------------------------------------


@admin.register(Message)
class MessageAdmin(ReviewOnlyAdmin):
    list_display = [
        "pk",
        "excerpt",
        "conversation_link",
        "owner",
        "role",
        "status",
        "model",
        "endpoint_name",
        "total_tokens",
        "created_at",
    ]
    list_filter = ["role", "status", "finish_reason", "model", "endpoint_name", "created_at"]
    search_fields = ["content", "conversation__title", "conversation__owner__username"]
    ordering = ["-pk"]

    def changelist_view(self, request, extra_context=None):
        """The list shows excerpts of people's messages: record whose, as opening them."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if request.method == "GET" and changelist is not None:
            shown = {m.conversation_id: m.conversation for m in changelist.result_list}
            AdminAccessRecord.objects.record(
                request.user, shown.values(), AdminAccessRecord.Action.LISTED
            )
        return response

    fields = [
        "conversation",
        "owner",
        "role",
        "status",
        "model",
        "endpoint_name",
        "body",
        "tool_calls",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "reasoning_tokens",
        "reasoning_seconds",
        "error",
        "created_at",
        "finished_at",
    ]
    readonly_fields = ["owner", "body"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("conversation__owner")

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_link(self, message):
        url = reverse("admin:conversations_conversation_change", args=[message.conversation_id])
        return format_html('<a href="{}">{}</a>', url, message.conversation)

    @admin.display(ordering="conversation__owner__username")
    def owner(self, message):
        return message.conversation.owner

    @admin.display(description="text")
    def excerpt(self, message):
        return Truncator(message.content).chars(60)

    @admin.display(description="text")
    def body(self, message):
        return message_body_html(message)

    def conversation_of(self, message):
        return message.conversation


# --- access records --------------------------------------------------------------------


@admin.register(AdminAccessRecord)
class AdminAccessRecordAdmin(admin.ModelAdmin):
    """The trail of who read whose conversation: for superusers, and nobody edits it."""

    list_display = [
        "accessed_at",
        "staff_username",
        "action",
        "conversation_link",
        "conversation_owner",
    ]
    list_filter = ["action", "accessed_at"]
    search_fields = ["staff_username", "conversation_title", "conversation_owner"]
    date_hierarchy = "accessed_at"
    fields = [
        "accessed_at",
        "staff",
        "staff_username",
        "action",
        "conversation",
        "conversation_title",
        "conversation_owner",
    ]

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="conversation", ordering="conversation_title")
    def conversation_link(self, record):
        if record.conversation_id is None:
            return f"{record.conversation_title} (deleted)"
        url = reverse("admin:conversations_conversation_change", args=[record.conversation_id])
        return format_html('<a href="{}">{}</a>', url, record.conversation_title)


from . import admin_endpoints, admin_tools  # noqa: E402,F401  (endpoints, tool servers)
