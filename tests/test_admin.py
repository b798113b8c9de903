"""Reviewing conversations and token usage in the admin: read-only, permissioned, recorded."""

import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations.admin_views import tick_step
from conversations.models import AdminAccessRecord, Conversation, Message

pytestmark = pytest.mark.django_db

CONVERSATIONS = reverse("admin:conversations_conversation_changelist")
MESSAGES = reverse("admin:conversations_message_changelist")
USAGE = reverse("admin:conversations_conversation_usage")
RECORDS = reverse("admin:conversations_adminaccessrecord_changelist")


def change_url(obj):
    return reverse(f"admin:conversations_{obj._meta.model_name}_change", args=[obj.pk])


def exchange(
    conversation,
    question,
    answer="An answer.",
    *,
    status=Message.Status.COMPLETE,
    prompt=10,
    completion=20,
    model="test-model",
    at=None,
    **reply_fields,
):
    """A user message and the assistant's reply to it; returns the reply."""
    at = at or timezone.now()
    Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=question, created_at=at
    )
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        content=answer,
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        model=model,
        finish_reason=reply_fields.pop("finish_reason", "stop"),
        created_at=at,
        finished_at=at,
        **reply_fields,
    )


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """The users here need no strong hashes; the default one costs a second per test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def grant_review(user):
    user.user_permissions.add(Permission.objects.get(codename="review_conversation"))


@pytest.fixture
def reviewer(django_user_model):
    reviewer = django_user_model.objects.create_user("rita", password="pw", is_staff=True)
    grant_review(reviewer)
    return reviewer


@pytest.fixture
def reviewer_client(client, reviewer):
    client.force_login(reviewer)
    return client


@pytest.fixture
def staff_client(client, django_user_model):
    """Staff, with the ordinary view permissions, but not allowed to review conversations."""
    staff = django_user_model.objects.create_user("sam", password="pw", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_conversation", "view_message"])
    )
    client.force_login(staff)
    return client


# --- the conversation list ---------------------------------------------------------------


def test_the_list_shows_owner_model_size_usage_activity_and_last_reply(admin_client, user):
    conversation = Conversation.objects.create(owner=user, title="Planning a trip", model="m-1")
    earlier = timezone.now() - timedelta(hours=2)
    exchange(conversation, "Where to?", prompt=100, completion=50, at=earlier)
    exchange(conversation, "And when?", prompt=200, completion=0, status="failed", error="boom")

    response = admin_client.get(CONVERSATIONS)

    assert response.status_code == 200
    (row,) = response.context["cl"].result_list
    assert (row.message_count, row.total_tokens, row.last_reply_status) == (4, 350, "failed")
    assert row.last_activity > earlier
    html = response.text
    for text in ["Planning a trip", "alice", "m-1", ">350<", ">4<", "Failed"]:
        assert text in html
    assert f'href="{USAGE}"' in html  # the overview is one click away


def test_a_conversation_without_messages_is_listed_with_zeros(admin_client, conversation):
    (row,) = admin_client.get(CONVERSATIONS).context["cl"].result_list
    assert (row.message_count, row.total_tokens, row.last_reply_status) == (0, 0, None)
    assert row.last_activity == conversation.created_at


@pytest.fixture
def three_conversations(user, other_user):
    fine = Conversation.objects.create(owner=user, title="fine", model="m-1")
    exchange(fine, "hello")
    recovered = Conversation.objects.create(owner=user, title="recovered", model="m-2")
    exchange(recovered, "first", status="interrupted", at=timezone.now() - timedelta(days=3))
    exchange(recovered, "again")
    broken = Conversation.objects.create(owner=other_user, title="broken", model="m-2")
    exchange(broken, "hello", status="failed", at=timezone.now() - timedelta(days=60))
    return fine, recovered, broken


def titles(response):
    return sorted(c.title for c in response.context["cl"].result_list)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("last_reply=complete", ["fine", "recovered"]),
        ("last_reply=failed", ["broken"]),
        ("problem=any", ["broken", "recovered"]),
        ("problem=interrupted", ["recovered"]),
        ("model=m-2", ["broken", "recovered"]),
        ("active=30", ["fine", "recovered"]),
    ],
)
def test_the_list_filters(admin_client, three_conversations, query, expected):
    assert titles(admin_client.get(f"{CONVERSATIONS}?{query}")) == expected


def test_the_list_filters_by_owner(admin_client, three_conversations, other_user):
    response = admin_client.get(f"{CONVERSATIONS}?owner__id__exact={other_user.pk}")
    assert titles(response) == ["broken"]


def test_the_list_has_a_date_hierarchy(admin_client, three_conversations):
    year = timezone.now().year
    response = admin_client.get(f"{CONVERSATIONS}?created_at__year={year}")
    assert titles(response) == ["broken", "fine", "recovered"]
    assert titles(admin_client.get(f"{CONVERSATIONS}?created_at__year={year - 1}")) == []


def test_search_finds_a_word_said_only_in_a_message(admin_client, user, other_user):
    about_zebras = Conversation.objects.create(owner=user, title="Animals")
    exchange(about_zebras, "Tell me about zebras", answer="Zebras have stripes. Zebras run.")
    exchange(Conversation.objects.create(owner=user, title="Other"), "Tell me about lions")

    assert titles(admin_client.get(f"{CONVERSATIONS}?q=zebras")) == ["Animals"]  # once
    assert titles(admin_client.get(f"{CONVERSATIONS}?q=tell+stripes")) == ["Animals"]
    assert titles(admin_client.get(f'{CONVERSATIONS}?q="about zebras"')) == ["Animals"]
    assert titles(admin_client.get(f'{CONVERSATIONS}?q="zebras about"')) == []
    assert titles(admin_client.get(f"{CONVERSATIONS}?q=alice")) == ["Animals", "Other"]
    assert titles(admin_client.get(f"{CONVERSATIONS}?q=bob")) == []


# --- the transcript ----------------------------------------------------------------------


def test_the_transcript_is_shown_sanitized_with_usage(admin_client, conversation):
    exchange(
        conversation,
        "Line one\nline <two>",
        answer="**Here**: <script>alert(1)</script>",
        prompt=11,
        completion=22,
        finish_reason="length",
        tool_calls=[{"id": "c1", "function": {"name": "get_weather", "arguments": "{}"}}],
    )
    exchange(conversation, "again", answer="", status="failed", error="The model was away")

    response = admin_client.get(change_url(conversation))

    assert response.status_code == 200
    html = response.text
    assert "Line one<br>line &lt;two&gt;" in html
    assert "<script>alert(1)</script>" not in html
    assert "<strong>Here</strong>" in html  # replies are Markdown
    for text in ["11 prompt", "22 completion", "33 total", "length", "get_weather"]:
        assert text in html
    assert "Failed" in html and "The model was away" in html
    assert "66 prompt + 0 completion = 66" not in html  # sums: 21 prompt, 42 completion
    assert "21 prompt + 42 completion = 63" in html
    assert 'name="_save"' not in html  # nothing to save


def test_nobody_can_rewrite_a_conversation_or_a_message(admin_client, conversation):
    reply = exchange(conversation, "What was said", answer="stays said")

    response = admin_client.post(change_url(conversation), {"title": "rewritten"})
    assert response.status_code == 403
    response = admin_client.post(change_url(reply), {"content": "rewritten"})
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:conversations_message_add")).status_code == 403
    assert admin_client.get(reverse("admin:conversations_conversation_add")).status_code == 403

    conversation.refresh_from_db()
    reply.refresh_from_db()
    assert (conversation.title, reply.content) == ("", "stays said")


def test_a_message_page_shows_the_rendered_text(admin_client, conversation):
    reply = exchange(conversation, "hi", answer="<img src=x onerror=alert(1)>")
    html = admin_client.get(change_url(reply)).text
    assert "<img src=x" not in html
    assert "alice" in html


# --- the message list --------------------------------------------------------------------


def test_the_message_list_filters_and_searches(admin_client, three_conversations):
    def contents(query):
        response = admin_client.get(f"{MESSAGES}?{query}")
        assert response.status_code == 200
        return sorted((m.conversation.title, m.role) for m in response.context["cl"].result_list)

    assert contents("status__exact=failed") == [("broken", "assistant")]
    assert contents("role__exact=user&q=hello") == [("broken", "user"), ("fine", "user")]
    assert contents("finish_reason=stop&model=test-model&q=fine") == [("fine", "assistant")]
    assert contents("q=recovered&status__exact=interrupted") == [("recovered", "assistant")]


# --- who may do what ---------------------------------------------------------------------


def test_staff_without_the_review_permission_see_nothing(staff_client, conversation):
    reply = exchange(conversation, "private")
    for url in [CONVERSATIONS, MESSAGES, USAGE, change_url(conversation), change_url(reply)]:
        assert staff_client.get(url).status_code == 403, url
    index = staff_client.get(reverse("admin:index")).text
    assert CONVERSATIONS not in index and USAGE not in index


def test_reviewers_read_everything_but_delete_nothing(reviewer_client, conversation):
    reply = exchange(conversation, "private")
    for url in [CONVERSATIONS, MESSAGES, USAGE, change_url(conversation), change_url(reply)]:
        assert reviewer_client.get(url).status_code == 200, url
    assert USAGE in reviewer_client.get(reverse("admin:index")).text

    delete = reverse("admin:conversations_conversation_delete", args=[conversation.pk])
    assert reviewer_client.post(delete, {"post": "yes"}).status_code == 403
    response = reviewer_client.post(
        CONVERSATIONS, {"action": "delete_selected", "_selected_action": [conversation.pk]}
    )
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    assert "delete_selected" not in response.text
    assert reviewer_client.get(RECORDS).status_code == 403  # the trail is for superusers


def test_superusers_can_delete_a_conversation(admin_client, conversation):
    exchange(conversation, "to be deleted")
    delete = reverse("admin:conversations_conversation_delete", args=[conversation.pk])
    response = admin_client.post(delete, {"post": "yes"})
    assert response.status_code == 302
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_superusers_can_delete_conversations_from_the_list(admin_client, user):
    doomed = [Conversation.objects.create(owner=user, title=f"c{n}") for n in range(2)]
    exchange(doomed[0], "to be deleted")
    kept = Conversation.objects.create(owner=user, title="kept")
    response = admin_client.post(
        CONVERSATIONS,
        {"action": "delete_selected", "_selected_action": [c.pk for c in doomed], "post": "yes"},
    )
    assert response.status_code == 302
    assert list(Conversation.objects.all()) == [kept]


# --- accountability ----------------------------------------------------------------------


def test_opening_someone_elses_conversation_is_recorded(reviewer_client, reviewer, conversation):
    reply = exchange(conversation, "private")
    own = Conversation.objects.create(owner=reviewer, title="mine")

    reviewer_client.get(change_url(conversation))
    reviewer_client.get(change_url(reply))
    reviewer_client.get(change_url(own))
    reviewer_client.get(CONVERSATIONS)  # the list is not an opening

    records = list(AdminAccessRecord.objects.order_by("pk"))
    assert [(r.staff, r.action, r.conversation) for r in records] == [
        (reviewer, "opened", conversation),
        (reviewer, "opened", conversation),
    ]
    assert (records[0].conversation_owner, records[0].staff_username) == ("alice", "rita")


def test_records_outlive_the_conversation_and_cannot_be_edited(admin_client, conversation):
    conversation.title = "Secret plans"
    conversation.save()
    admin_client.get(change_url(conversation))
    conversation.delete()

    record = AdminAccessRecord.objects.get()
    assert (record.conversation, record.conversation_title) == (None, "Secret plans")
    response = admin_client.get(RECORDS)
    assert "Secret plans (deleted)" in response.text
    assert admin_client.post(change_url(record), {"staff_username": "x"}).status_code == 403
    delete = reverse("admin:conversations_adminaccessrecord_delete", args=[record.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert admin_client.get(reverse("admin:conversations_adminaccessrecord_add")).status_code == 403


# --- export ------------------------------------------------------------------------------


def test_export_downloads_conversations_with_messages_and_usage(
    reviewer_client, reviewer, conversation, other_user, settings
):
    settings.OPENAI_API_KEY = "sk-very-secret"
    conversation.title = "Exported"
    conversation.save()
    exchange(conversation, "question?", answer="answer!", prompt=3, completion=4)
    other = Conversation.objects.create(owner=other_user, title="Not selected")
    exchange(other, "elsewhere")

    response = reviewer_client.post(
        CONVERSATIONS, {"action": "export_as_json", "_selected_action": [conversation.pk]}
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    assert b"sk-very-secret" not in response.content
    assert conversation.owner.password.encode() not in response.content
    document = json.loads(response.content)
    assert document["exported_by"] == "rita"
    (exported,) = document["conversations"]
    assert exported["title"] == "Exported"
    assert exported["owner"] == {"id": conversation.owner_id, "username": "alice"}
    assert exported["usage"] == {
        "messages": 2,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }
    question, answer = exported["messages"]
    assert (question["role"], question["content"]) == ("user", "question?")
    assert {"id", "status", "tool_calls", "finish_reason", "error", "finished_at"} <= set(answer)
    assert (answer["content"], answer["total_tokens"], answer["model"]) == (
        "answer!",
        7,
        "test-model",
    )

    (record,) = AdminAccessRecord.objects.all()
    assert (record.staff, record.action, record.conversation) == (
        reviewer,
        "exported",
        conversation,
    )


# --- the usage overview ------------------------------------------------------------------


def at(day, hour=12):
    return datetime(2026, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def march(user, other_user):
    """Replies on 2, 3 and 5 March (and one on 10 March, outside the period asked for)."""
    alices = Conversation.objects.create(owner=user, title="alice's")
    exchange(alices, "a", prompt=10, completion=5, model="small", at=at(2, 9))
    exchange(alices, "b", prompt=20, completion=7, model="big", at=at(2, 23))
    exchange(alices, "c", prompt=30, completion=0, model="big", at=at(3), status="failed")
    bobs = Conversation.objects.create(owner=other_user, title="bob's")
    exchange(bobs, "d", prompt=40, completion=9, model="big", at=at(3), status="interrupted")
    exchange(bobs, "e", prompt=50, completion=1, model="small", at=at(5), status="failed")
    exchange(bobs, "f", prompt=1000, completion=1000, model="big", at=at(10))


def usage(client, date_from="2026-03-01", date_to="2026-03-07"):
    response = client.get(USAGE, {"date_from": date_from, "date_to": date_to})
    assert response.status_code == 200
    return response


def test_the_overview_sums_tokens_per_day_user_and_model(admin_client, march):
    context = usage(admin_client).context

    assert [
        (
            row["day"],
            row["prompt"],
            row["completion"],
            row["tokens"],
            row["failed"],
            row["interrupted"],
        )
        for row in context["per_day"]
    ] == [
        (date(2026, 3, 2), 30, 12, 42, 0, 0),
        (date(2026, 3, 3), 70, 9, 79, 1, 1),
        (date(2026, 3, 5), 50, 1, 51, 1, 0),
    ]
    assert [
        (row["username"], row["conversations"], row["sent"], row["replies"], row["tokens"])
        for row in context["per_user"]
    ] == [("bob", 1, 2, 2, 100), ("alice", 1, 3, 3, 72)]
    assert [
        (row["model"], row["replies"], row["tokens"], row["failed"], row["interrupted"])
        for row in context["per_model"]
    ] == [("big", 3, 106, 1, 1), ("small", 2, 66, 1, 0)]
    totals = context["totals"]
    assert (totals["tokens"], totals["replies"], totals["failed"], totals["interrupted"]) == (
        172,
        5,
        2,
        1,
    )


def test_the_overview_draws_tokens_per_day_as_inline_svg(admin_client, march):
    response = usage(admin_client)
    html = response.text
    svg = html.split('<svg id="token-chart"')[1].split("</svg>")[0]
    assert "<rect" in svg
    assert "<script" not in svg and "style=" not in svg  # fit for a strict CSP
    chart = response.context["chart"]
    assert [bar.day for bar in chart.bars] == [date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 5)]
    assert len(chart.day_labels) == 7
    tallest = max(chart.bars, key=lambda bar: bar.prompt + bar.completion)
    assert tallest.day == date(2026, 3, 3)
    assert tallest.completion_y >= chart.top  # inside the plot
    assert "Tue 3 Mar 2026: 70 prompt + 9 completion tokens" in html
    assert "?status__exact=failed" not in html  # links carry the day too
    assert "status__exact=failed" in html


def test_the_overview_links_a_days_failures_to_those_replies(admin_client, march):
    (march_3,) = [row for row in usage(admin_client).context["per_day"] if row["day"].day == 3]
    response = admin_client.get(march_3["failed_url"])
    assert response.status_code == 200
    (failed,) = response.context["cl"].result_list
    assert (failed.status, failed.created_at, failed.prompt_tokens) == ("failed", at(3), 30)


def test_the_overview_defaults_to_the_last_30_days(admin_client, conversation):
    exchange(conversation, "today", prompt=1, completion=2)
    exchange(conversation, "long ago", prompt=100, at=timezone.now() - timedelta(days=40))
    response = admin_client.get(USAGE)
    assert response.context["totals"]["tokens"] == 3
    assert len(response.context["chart"].day_labels) == 10  # every third of 30 days


def test_the_overview_refuses_a_backwards_period(admin_client):
    response = usage(admin_client, date_from="2026-03-07", date_to="2026-03-01")
    assert "The period ends before it starts." in response.text
    assert "chart" not in response.context


@pytest.mark.parametrize(
    ("highest", "step"), [(0, 1), (4, 1), (5, 2), (9, 5), (42, 20), (79, 20), (1001, 500)]
)
def test_chart_axis_steps_are_tidy(highest, step):
    assert tick_step(highest) == step


# --- a constant number of queries, however many rows ---------------------------------------


def populate(owner, conversations):
    """``conversations`` conversations of two exchanges each, one with a failed reply."""
    made = Conversation.objects.bulk_create(
        Conversation(owner=owner, title=f"c{n}", model="m") for n in range(conversations)
    )
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role=role,
            status="failed" if n == 3 else "complete",
            total_tokens=5,
            content="hello",
        )
        for conversation in made
        for n, role in enumerate(["user", "assistant", "user", "assistant"])
    )


def count_queries(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


@pytest.mark.parametrize(
    "url",
    [
        CONVERSATIONS,
        f"{CONVERSATIONS}?q=hello&problem=any&o=4",
        MESSAGES,
        f"{MESSAGES}?q=hello",
        USAGE,
    ],
)
def test_pages_make_the_same_queries_for_5_or_60_conversations(
    reviewer_client, user, other_user, url
):
    populate(user, 5)
    few = count_queries(reviewer_client, url)
    populate(other_user, 55)
    many = count_queries(reviewer_client, url)
    assert few == many
    assert many <= 12


def test_a_transcript_takes_the_same_queries_for_4_or_60_messages(reviewer_client, user):
    populate(user, 1)
    conversation = Conversation.objects.get()
    few = count_queries(reviewer_client, change_url(conversation))
    for n in range(28):
        exchange(conversation, f"more {n}")
    assert count_queries(reviewer_client, change_url(conversation)) == few


def test_export_takes_the_same_queries_for_5_or_60_conversations(reviewer_client, user):
    def export_queries():
        selected = list(Conversation.objects.values_list("pk", flat=True))
        with CaptureQueriesContext(connection) as queries:
            response = reviewer_client.post(
                CONVERSATIONS, {"action": "export_as_json", "_selected_action": selected}
            )
        assert len(json.loads(response.content)["conversations"]) == len(selected)
        return len(queries)

    populate(user, 5)
    few = export_queries()
    populate(user, 55)
    assert export_queries() == few


def test_the_transcript_and_the_export_show_the_reasoning(admin_client, conversation):
    Message.objects.create(conversation=conversation, role="user", content="Why?")
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="Because.",
        reasoning="*Weighing* it <img src=x onerror=alert(1)>",
        reasoning_seconds=4.2,
        reasoning_tokens=7,
    )
    html = admin_client.get(change_url(conversation)).text
    assert 'data-part="reasoning"' in html and "Reasoning (4 s)" in html
    assert "<em>Weighing</em>" in html  # Markdown, through the same sanitizer
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    export = admin_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_as_json", "_selected_action": [conversation.pk]},
    )
    (exported,) = json.loads(export.content)["conversations"]
    (message,) = [m for m in exported["messages"] if m["role"] == "assistant"]
    assert (message["reasoning"], message["reasoning_seconds"], message["reasoning_tokens"]) == (
        "*Weighing* it <img src=x onerror=alert(1)>",
        4.2,
        7,
    )


def test_the_transcript_and_the_export_show_the_tool_rounds(admin_client, conversation, client):
    Message.objects.create(conversation=conversation, role="user", content="Echo it")
    call = {
        "id": "call_1",
        "name": "box__echo",
        "tool": "echo",
        "server": "box",
        "arguments": '{"text": "<b>hi</b>"}',
        "state": "done",
        "result": "<script>alert(1)</script>",
        "seconds": 0.25,
    }
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="Looking.\n\nIt said hi.",
        tool_rounds=[{"text_end": 8, "calls": [call]}],
    )
    html = admin_client.get(change_url(conversation)).text
    assert 'data-part="tool-call" data-tool-name="echo"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "done in 0.25 s" in html
    client.force_login(conversation.owner)
    exported = client.get(reverse("conversation-export", args=[conversation.pk])).json()
    (message,) = [m for m in exported["messages"] if m["role"] == "assistant"]
    assert message["tool_rounds"] == [{"text_end": 8, "calls": [call]}]


@pytest.mark.parametrize(
    ("date_from", "date_to"),
    [("9999-12-01", "9999-12-31"), ("9999-12-30", "9999-12-30"), ("0001-01-01", "0001-01-05")],
)
def test_the_overview_refuses_dates_at_the_ends_of_the_calendar(admin_client, date_from, date_to):
    response = usage(admin_client, date_from=date_from, date_to=date_to)
    assert response.status_code == 200
    assert "Choose dates between the years 1 and 9999." in response.text


def test_the_message_list_and_its_search_record_whose_excerpts_were_shown(
    reviewer_client, reviewer, conversation, other_user
):
    exchange(conversation, "alice's secret")
    theirs = Conversation.objects.create(owner=other_user, title="bob's")
    exchange(theirs, "bob's words")
    own = Conversation.objects.create(owner=reviewer, title="mine")
    exchange(own, "my own")
    messages = reverse("admin:conversations_message_changelist")

    reviewer_client.get(messages, {"q": "secret"})
    assert [(r.action, r.conversation) for r in AdminAccessRecord.objects.all()] == [
        ("listed", conversation)
    ]
    reviewer_client.get(messages)
    listed = AdminAccessRecord.objects.filter(action="listed").values_list(
        "conversation", flat=True
    )
    assert sorted(listed) == sorted([conversation.pk, conversation.pk, theirs.pk])  # not own


def test_the_transcript_and_the_export_show_every_version(admin_client, conversation):
    first = conversation.send("Tell me a joke", "m")
    first.reply.finish(status="complete", content="The first joke.", finish_reason="stop")
    again = conversation.regenerate(first.reply.pk, "m")
    again.reply.finish(status="complete", content="The second joke.", finish_reason="stop")
    edited = conversation.edit(first.added[0].pk, "Tell me a riddle", "m")
    edited.reply.finish(status="complete", content="A riddle.", finish_reason="stop")
    html = admin_client.get(change_url(conversation)).text
    rows = re.findall(r'<tr id="transcript-(\d+)" class="([^"]*)"', html)
    sent, riddle = first.added[0].pk, edited.added[0].pk
    # Depth first: the first message, its two replies, then the edited version and its reply.
    assert [int(pk) for pk, _ in rows] == [
        sent,
        first.reply.pk,
        again.reply.pk,
        riddle,
        edited.reply.pk,
    ]
    assert [("off-branch" in css) for _, css in rows] == [True, True, True, False, False]
    assert html.count("version 1 / 2") == 2 and html.count("version 2 / 2") == 2
    assert "not shown (another version is)" in html

    export = admin_client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_as_json", "_selected_action": [conversation.pk]},
    )
    (exported,) = json.loads(export.content)["conversations"]
    assert exported["branch"] == [riddle, edited.reply.pk]
    parents = {m["id"]: m["parent_id"] for m in exported["messages"]}
    assert parents == {
        sent: None,
        first.reply.pk: sent,
        again.reply.pk: sent,
        riddle: None,
        edited.reply.pk: riddle,
    }
