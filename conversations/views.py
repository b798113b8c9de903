from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe

from . import replies
from .models import Conversation, model_label


@require_safe
@login_required
def conversation_list(request):
    conversations = Conversation.objects.owned_by(request.user)[:200]
    return render(
        request,
        "conversations/conversation_list.html",
        {"conversations": conversations, "default_model_label": model_label("")},
    )


@require_POST
@login_required
def conversation_create(request):
    conversation = Conversation.objects.create(owner=request.user)
    return redirect(conversation)


@require_safe
@login_required
def conversation_detail(request, pk):
    conversation = get_object_or_404(Conversation.objects.owned_by(request.user), pk=pk)
    replies.sweep_orphans(conversation.pk)
    messages = list(conversation.messages.all())
    return render(
        request,
        "conversations/conversation_detail.html",
        {
            "conversation": conversation,
            "messages": messages,
            "conversations": Conversation.objects.owned_by(request.user)[:200],
            "default_model_label": model_label(""),
        },
    )
