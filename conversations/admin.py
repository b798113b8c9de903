from django.contrib import admin

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "status", "content", "finish_reason", "total_tokens", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "model", "updated_at"]
    list_filter = ["model", "updated_at"]
    search_fields = ["title", "owner__username"]
    list_select_related = ["owner"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["pk", "conversation", "role", "status", "finish_reason", "total_tokens"]
    list_filter = ["role", "status", "finish_reason", "model"]
    search_fields = ["content"]
    list_select_related = ["conversation"]
