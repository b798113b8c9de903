import tempfile

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from . import imports, page, search
from .forms import ConversationSettingsForm
from .models import Conversation, ConversationImport, Preset, model_label
from .rendering import retitled_html, settings_html, tools_panel_html
from .runtime import runtime
from .tool_calls import tool_panel


def own_conversation(request, pk) -> Conversation:
    """The user's conversation, or 404: other people's conversations do not exist for them."""
    return get_object_or_404(Conversation.objects.owned_by(request.user), pk=pk)


@require_safe
@login_required
@cache_control(private=True)  # one person's conversations: no shared cache keeps them
def conversation_list(request):
    return render(
        request,
        "conversations/conversation_list.html",
        {
            **list_context(request.user),
            "default_model_label": model_label(""),
            "presets": Preset.objects.filter(owner=request.user),
        },
    )


@require_POST
@login_required
def conversation_rename(request, pk):
    """A title given by its owner: in the heading and the list at once, never replaced by
    one the model writes."""
    conversation = own_conversation(request, pk)
    title = " ".join(request.POST.get("title", "").split())[:200]
    if title:
        conversation.title = title  # no longer the first words: the model's title skips it
        conversation.save(update_fields=["title"])
    return HttpResponse(retitled_html(conversation))


@require_POST
@login_required
def conversation_pin(request, pk):
    """Pin the conversation to the top of the list, or unpin it."""
    conversation = own_conversation(request, pk)
    conversation.pinned = request.POST.get("pinned") == "1"
    conversation.save(update_fields=["pinned"])
    return redirect(conversation)


@require_safe
@login_required
@cache_control(private=True)
def conversation_search(request):
    """The sidebar's list for a search (by title and message text), or the recent ones."""
    query = request.GET.get("q", "").strip()[: search.MAX_QUERY]
    current, page = request.GET.get("current", ""), request.GET.get("page", "")
    page = min(int(page), 10_000) if page.isdigit() and int(page) > 0 else 1
    context = {
        "current": int(current) if current.isdigit() else None,
        "query": query,
        "hits": search.search(request.user, query) if query else None,
        **list_context(request.user, page),
    }
    # A later page is the next rows of the list (loaded as the reader scrolls to its end).
    name = "_conversation_rows.html" if page > 1 and not query else "_conversation_links.html"
    return render(request, f"conversations/{name}", context)


def list_context(user, page: int = 1) -> dict:
    conversations, more = Conversation.objects.listed_for(user, page)
    return {"conversations": conversations, "more_conversations": more, "list_page": page}


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
@cache_control(private=True)
def conversation_new(request):
    """The page of a new conversation, which its first message stores (so "New
    conversation" leaves no empty rows). A POST (the "New conversation" button) starts
    afresh, from a preset if one is chosen: the settings wait in the session."""
    if request.method != "POST":
        draft = request.session.get(Conversation.DRAFT)
        return conversation_page(request, Conversation.drafted(request.user, draft), [])
    preset_id = request.POST.get("preset", "")
    preset = None
    if preset_id.isdigit() and len(preset_id) < 19:  # an id, within the database's range
        preset = Preset.objects.filter(owner=request.user, pk=preset_id).first()
    draft = {field: getattr(preset, field) for field in Preset.FIELDS} if preset else {}
    request.session[Conversation.DRAFT] = draft
    return redirect("conversation-new")


@require_safe
@login_required
@cache_control(private=True)  # one person's conversations: no shared cache keeps them
def conversation_detail(request, pk):
    conversation = own_conversation(request, pk)
    runtime.sweep_orphans(conversation.pk)
    return conversation_page(request, conversation, conversation.branch())


def conversation_page(request, conversation, messages):
    return render(
        request,
        "conversations/conversation_detail.html",
        {
            "conversation": conversation,
            "messages": messages,
            **list_context(request.user),
            "settings_form": ConversationSettingsForm(
                instance=conversation, groups=runtime.model_choices()
            ),
            **page.context(),
        },
    )


@require_POST
@login_required
@cache_control(private=True)
def conversation_settings(request, pk=None):
    """Save the conversation's model, instructions and parameters (from the next reply
    on); for a conversation not stored yet (no ``pk``), keep them for its first message."""
    if pk is None:
        draft = request.session.get(Conversation.DRAFT)
        conversation = Conversation.drafted(request.user, draft)
    else:
        conversation = own_conversation(request, pk)
    form = ConversationSettingsForm(
        request.POST, instance=conversation, groups=runtime.model_choices()
    )
    saved = ""
    if form.is_valid():
        if pk is None:
            chosen = {field: form.cleaned_data.get(field) for field in form.Meta.fields}
            request.session[Conversation.DRAFT] = chosen
        else:
            # Only its own fields: a title written meanwhile (conversations/titles.py) stays.
            form.save(commit=False).save(update_fields=form.Meta.fields)
        preset = form.save_preset(request.user)
        saved = "Saved: it applies from the next reply."
        if preset is not None:
            saved = f"Saved, and kept as the preset “{preset.name}”."
    opened = request.POST.get("opened") == "1"
    return HttpResponse(settings_html(conversation, form, saved=saved, opened=opened))


@require_http_methods(["GET", "POST"])
@login_required
@cache_control(private=True)
async def conversation_tools(request, pk):
    """The conversation's Tools panel; a POST switches its tools on or off."""
    conversation = await sync_to_async(own_conversation)(request, pk)
    if request.method == "POST":
        listed, on = request.POST.getlist("listed"), request.POST.getlist("on")
        await sync_to_async(conversation.switch_tools)(listed, on)
    panel = await tool_panel(conversation.pk)
    return HttpResponse(tools_panel_html(conversation, panel))


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def conversation_delete(request, pk):
    conversation = own_conversation(request, pk)
    if request.method == "POST":
        if conversation.messages.streaming().exists():
            return render(
                request,
                "conversations/conversation_delete.html",
                {"conversation": conversation, "busy": True},
                status=409,
            )
        conversation.delete()
        return redirect("conversation-list")
    return render(request, "conversations/conversation_delete.html", {"conversation": conversation})


@require_safe
@login_required
@cache_control(private=True)  # one person's conversations: no shared cache keeps them
def conversation_export(request, pk):
    conversation = own_conversation(request, pk)
    response = JsonResponse(conversation.export(), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="conversation-{conversation.pk}.json"'
    return response


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
@cache_control(private=True)
def conversation_import(request):
    """The import page; a POST takes a file, stores it to a temporary file and imports it
    in the background (conversations/imports.py), then shows its progress."""
    error, status = "", 200
    if request.method == "POST":
        limit = settings.CHAT_IMPORT_MAX_BYTES
        sent = request.META.get("CONTENT_LENGTH", "")
        sent = int(sent) if sent.isdigit() else 0
        # A body far past the limit is refused before it is parsed into a temporary file.
        upload = request.FILES.get("file") if sent <= limit + 64 * 1024 else None
        if sent > limit + 64 * 1024 or (upload is not None and upload.size > limit):
            error, status = too_big(upload.size if upload else sent, limit), 413
        elif upload is None:
            error, status = "Choose a file to import (conversations.json, say).", 400
        else:
            job = ConversationImport.objects.create(owner=request.user, file_name=upload.name[:255])
            with tempfile.NamedTemporaryFile(prefix="import-", suffix=".json", delete=False) as f:
                for piece in upload.chunks():
                    f.write(piece)
            imports.start(job, f.name)
            return redirect("conversation-import-progress", job.pk)
    return render(
        request,
        "conversations/import.html",
        {
            **list_context(request.user),
            "error": error,
            "max_megabytes": settings.CHAT_IMPORT_MAX_BYTES // (1024 * 1024),
            "recent": ConversationImport.objects.filter(owner=request.user)[:5],
        },
        status=status,
    )


def too_big(size: int, limit: int) -> str:
    return (
        f"The file is {size / 1024 / 1024:,.1f} MB; the largest accepted is "
        f"{limit / 1024 / 1024:,.0f} MB."
    )


@require_safe
@login_required
@cache_control(private=True)
def conversation_import_progress(request, pk):
    """An import's page; for htmx (polling it every second until it ends), its progress."""
    job = get_object_or_404(ConversationImport, owner=request.user, pk=pk)
    imports.sweep_if_stale(job)
    context = {"job": job, "imported": job.conversations() if job.status == "done" else []}
    if request.headers.get("HX-Request"):
        return render(request, "conversations/import.html#progress", context)
    context.update(list_context(request.user))
    return render(request, "conversations/import.html", context)


@require_http_methods(["GET", "HEAD", "POST"])
def signup(request):
    if not settings.CHAT_ALLOW_SIGNUP:
        raise Http404("Sign-up is closed on this site.")
    if request.user.is_authenticated:
        return redirect("conversation-list")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("conversation-list")
    return render(request, "registration/signup.html", {"form": form})
