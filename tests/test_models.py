"""Conversation and Message: state changes as methods, rules kept by the database."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from conversations.models import (
    CONTINUE_INSTRUCTION,
    ActionRefused,
    Conversation,
    Message,
    model_label,
)
from conversations.upstream import Usage

pytestmark = pytest.mark.django_db


def reply(conversation, **fields) -> Message:
    fields = {"role": Message.Role.ASSISTANT, "status": Message.Status.STREAMING, **fields}
    return Message.objects.create(conversation=conversation, **fields)


def test_one_streaming_reply_per_conversation(conversation):
    reply(conversation)
    with pytest.raises(IntegrityError), transaction.atomic():
        reply(conversation)
    other = Conversation.objects.create(owner=conversation.owner)
    reply(other)  # another conversation may stream at the same time
    reply(conversation, status=Message.Status.COMPLETE)  # finished rows are not limited


def test_finish_stores_the_end_once(conversation, django_assert_num_queries):
    message = reply(conversation, content="")
    with django_assert_num_queries(1):
        message.finish(
            status=Message.Status.COMPLETE,
            content="All done.",
            tool_calls=[
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
            ],
            finish_reason="stop",
            usage=Usage(3, 4, 7),
        )
    message.refresh_from_db()
    assert (message.status, message.content, message.finish_reason) == (
        "complete",
        "All done.",
        "stop",
    )
    assert (message.prompt_tokens, message.completion_tokens, message.total_tokens) == (3, 4, 7)
    assert message.tool_calls[0]["function"]["name"] == "f"
    assert message.finished_at is not None

    # A finished reply stays finished: a late second ending changes nothing.
    message.finish(status=Message.Status.FAILED, content="", error="late")
    message.refresh_from_db()
    assert (message.status, message.content, message.error) == ("complete", "All done.", "")


def test_unknown_usage_is_stored_as_unknown(conversation):
    message = reply(conversation)
    message.finish(status=Message.Status.COMPLETE, content="x", usage=None)
    message.refresh_from_db()
    assert (message.prompt_tokens, message.completion_tokens, message.total_tokens) == (
        None,
        None,
        None,
    )


def test_checkpoint_saves_text_while_streaming_only(conversation):
    message = reply(conversation)
    message.checkpoint("So far")
    message.refresh_from_db()
    assert (message.content, message.status) == ("So far", "streaming")
    assert message.checkpoint_at is not None
    message.finish(status=Message.Status.STOPPED, content="So far, and more")
    message.checkpoint("stale")
    message.refresh_from_db()
    assert message.content == "So far, and more"


def test_checkpoint_many_saves_every_streaming_reply_and_no_ended_one(conversation):
    other = Conversation.objects.create(owner=conversation.owner)
    first, second = reply(conversation), reply(other)
    ended = Conversation.objects.create(owner=conversation.owner)
    done = reply(ended)
    done.finish(status=Message.Status.COMPLETE, content="The whole answer")
    before = timezone.now()
    Message.checkpoint_many(
        [(first, "One", "thought 1"), (second, "Two \u2014 \U0001f600", ""), (done, "stale", "")]
    )
    for message, content, reasoning in [
        (first, "One", "thought 1"),
        (second, "Two \u2014 \U0001f600", ""),
    ]:
        message.refresh_from_db()
        assert (message.content, message.reasoning, message.status) == (
            content,
            reasoning,
            "streaming",
        )
        assert before <= message.checkpoint_at <= timezone.now()
    done.refresh_from_db()
    assert (done.content, done.status) == ("The whole answer", "complete")


def test_orphans_are_streaming_rows_without_a_recent_checkpoint(conversation):
    old = timezone.now() - timedelta(seconds=60)
    lost = reply(conversation, content="kept", checkpoint_at=old)
    other = Conversation.objects.create(owner=conversation.owner)
    alive = reply(other, checkpoint_at=timezone.now())
    running_here = Conversation.objects.create(owner=conversation.owner)
    mine = reply(running_here, checkpoint_at=old)

    orphans = Message.objects.orphaned(running=[mine.pk], stale_after=10)
    assert list(orphans) == [lost]
    assert orphans.interrupt("gone") == 1
    lost.refresh_from_db()
    assert (lost.status, lost.content, lost.error) == ("interrupted", "kept", "gone")
    alive.refresh_from_db()
    assert alive.status == "streaming"


def test_continue_is_offered_for_replies_that_ended_early(conversation):
    cases = [
        ({"status": "interrupted", "content": "Half"}, True),
        ({"status": "stopped", "content": "Half"}, True),
        ({"status": "complete", "content": "Long", "finish_reason": "length"}, True),
        ({"status": "complete", "content": "Done", "finish_reason": "stop"}, False),
        ({"status": "interrupted", "content": ""}, False),
        ({"status": "failed", "content": "Oops"}, False),
    ]
    for fields, expected in cases:
        assert Message(role="assistant", **fields).can_continue is expected, fields
    assert not Message(role="user", status="complete", content="Hi").can_continue


def test_reopen_puts_an_ended_reply_back_to_streaming(conversation):
    message = reply(conversation, status=Message.Status.INTERRUPTED, content="Half", error="cut")
    assert message.reopen()
    message.refresh_from_db()
    assert (message.status, message.error, message.content) == ("streaming", "", "Half")
    stale = Message.objects.get(pk=message.pk)
    stale.status = Message.Status.STOPPED
    assert not stale.reopen()  # it changed meanwhile


def test_the_prompt_is_the_finished_history_with_the_system_prompt(conversation):
    conversation.system_prompt = "Be brief."
    Message.objects.create(conversation=conversation, role="user", content="Hi")
    Message.objects.create(conversation=conversation, role="assistant", content="Hello")
    Message.objects.create(conversation=conversation, role="user", content="And?")
    Message.objects.create(conversation=conversation, role="assistant", content="", status="failed")
    reply(conversation)  # the reply being written is not part of its own prompt
    assert conversation.prompt() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And?"},
    ]


def test_export_holds_every_message_field_and_the_usage(conversation):
    Message.objects.create(conversation=conversation, role="user", content="Hi")
    Message.objects.create(
        conversation=conversation, role="assistant", content="Hey", total_tokens=9, prompt_tokens=4
    )
    document = conversation.export()
    assert document["owner"] == {"id": conversation.owner_id, "username": "alice"}
    assert document["usage"] == {
        "messages": 2,
        "prompt_tokens": 4,
        "completion_tokens": 0,
        "total_tokens": 9,
    }
    assert [m["content"] for m in document["messages"]] == ["Hi", "Hey"]
    assert {"status", "finish_reason", "tool_calls", "error", "created_at"} <= set(
        document["messages"][0]
    )


def test_urls_and_labels(conversation, settings):
    assert conversation.get_absolute_url() == f"/c/{conversation.pk}/"
    assert conversation.websocket_path == f"/ws/conversations/{conversation.pk}/"
    settings.OPENAI_BASE_URL = ""
    settings.CHAT_MODEL = ""
    assert "not a language model" in model_label("demo")
    settings.OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
    assert model_label("llama3.2") == "llama3.2"
    assert model_label("") == "the server's default model"


# --- starting a reply, without a socket ---------------------------------------------------


def test_send_stores_the_message_and_a_streaming_reply(conversation):
    conversation.title = ""
    conversation.save()
    started = conversation.send("  Hello   there ", "fallback-model")
    sent, reply_row = started.added
    assert (sent.role, sent.content, sent.status) == ("user", "  Hello   there ", "complete")
    assert (reply_row.role, reply_row.status, reply_row.model) == (
        "assistant",
        "streaming",
        "test-model",
    )
    assert started.reply == reply_row and started.removed == []
    assert started.prompt == [{"role": "user", "content": "  Hello   there "}]
    assert started.retitled == conversation
    assert Conversation.objects.get(pk=conversation.pk).title == "Hello there"
    with pytest.raises(ActionRefused, match="still being written"):
        conversation.send("Again", "fallback-model")
    assert conversation.messages.count() == 2  # the refused message stored nothing


def test_send_takes_the_default_model_when_the_conversation_names_none(user):
    conversation = Conversation.objects.create(owner=user)
    started = conversation.send("Hi", "fallback-model")
    assert started.reply.model == "fallback-model"
    assert Conversation.objects.get(pk=conversation.pk).model == "fallback-model"


@pytest.mark.parametrize(
    ("content", "refusal"),
    [("", "Type a message first"), ("   ", "Type a message first"), (7, "Type a message")],
)
def test_send_refuses_what_is_not_a_message(conversation, content, refusal):
    with pytest.raises(ActionRefused, match=refusal):
        conversation.send(content, "m")
    assert not conversation.messages.exists()


def test_send_refuses_an_over_long_message(conversation, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    with pytest.raises(ActionRefused, match="11 characters long; the limit is 10"):
        conversation.send("x" * 11, "m")
    assert not conversation.messages.exists()


def test_limits_count_the_owners_messages_and_replies(conversation, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    settings.CHAT_CONCURRENT_REPLIES = 5
    for text in ("one", "two"):
        started = conversation.send(text, "m")
        started.reply.finish(status=Message.Status.COMPLETE, content="ok")
    with pytest.raises(ActionRefused, match=r"2 replies a minute .* Try again in \d+ s"):
        conversation.send("three", "m")
    with pytest.raises(ActionRefused, match="2 replies a minute"):
        conversation.regenerate(started.reply.pk, "m")  # regenerating asks upstream too
    settings.CHAT_MESSAGES_PER_MINUTE = 100
    settings.CHAT_CONCURRENT_REPLIES = 1
    other = Conversation.objects.create(owner=conversation.owner)
    reply(other)
    with pytest.raises(ActionRefused, match="1 replies being written"):
        conversation.admit_reply()


def finished(started, content):
    started.reply.finish(status=Message.Status.COMPLETE, content=content, finish_reason="stop")
    return started


def shown(conversation):
    return [(m.role, m.content) for m in conversation.branch()]


def test_regenerate_keeps_the_earlier_reply_as_a_version(conversation):
    first = conversation.send("Hi", "m")
    with pytest.raises(ActionRefused, match="still being written"):
        conversation.regenerate(first.reply.pk, "m")
    finished(first, "Hello")
    with pytest.raises(ActionRefused, match="Only replies can be regenerated"):
        conversation.regenerate(first.added[0].pk, "m")
    again = conversation.regenerate(first.reply.pk, "m")
    assert again.removed == [first.reply.pk] and again.added == [again.reply]
    assert again.prompt == [{"role": "user", "content": "Hi"}]
    assert Message.objects.filter(pk=first.reply.pk).exists()  # kept, as version 1
    versions = again.reply.versions
    assert (versions.index, versions.count, versions.previous) == (2, 2, first.reply.pk)
    assert [m.pk for m in conversation.branch()] == [first.added[0].pk, again.reply.pk]
    with pytest.raises(ActionRefused, match="being written"):
        conversation.switch_version(first.reply.pk)
    finished(again, "Hello again")

    switch = conversation.switch_version(first.reply.pk)
    assert switch.removed == [again.reply.pk] and switch.added == [first.reply]
    versions = switch.added[0].versions
    assert (versions.index, versions.count, versions.next) == (1, 2, again.reply.pk)
    assert shown(conversation) == [("user", "Hi"), ("assistant", "Hello")]  # as stored

    # The next message follows the version on screen, and so does its prompt.
    more = conversation.send("More", "m")
    assert more.added[0].parent_id == first.reply.pk
    assert more.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "More"},
    ]


def test_edit_starts_a_branch_and_keeps_the_original(conversation):
    a = finished(conversation.send("A", "m"), "reply to A")
    b = finished(conversation.send("B", "m"), "reply to B")
    (sent_a, reply_a), (sent_b, reply_b) = a.added, b.added
    with pytest.raises(ActionRefused, match="Type a message first"):
        conversation.edit(sent_a.pk, "  ", "m")
    with pytest.raises(ActionRefused, match="Only your own messages can be edited"):
        conversation.edit(reply_a.pk, "no", "m")

    edited = conversation.edit(sent_a.pk, "A, said better", "m")
    new_a, new_reply = edited.added
    assert edited.removed == [sent_a.pk, reply_a.pk, sent_b.pk, reply_b.pk]
    assert edited.prompt == [{"role": "user", "content": "A, said better"}]
    assert new_a.parent_id is None and new_reply.parent_id == new_a.pk
    assert (new_a.versions.index, new_a.versions.count) == (2, 2)
    assert new_a.versions.previous == sent_a.pk
    assert new_reply.versions.count == 1
    finished(edited, "reply to the better A")

    # The original branch is kept whole, and comes back with its version.
    conversation.switch_version(sent_a.pk)
    assert shown(conversation) == [
        ("user", "A"),
        ("assistant", "reply to A"),
        ("user", "B"),
        ("assistant", "reply to B"),
    ]
    second = conversation.edit(sent_b.pk, "B2", "m")
    assert second.prompt == [
        {"role": "user", "content": "A"},
        {"role": "assistant", "content": "reply to A"},
        {"role": "user", "content": "B2"},
    ]
    finished(second, "reply to B2")
    switch = conversation.switch_version(new_a.pk)
    assert switch.removed == [sent_a.pk, reply_a.pk, second.added[0].pk, second.reply.pk]
    assert [m.pk for m in switch.added] == [new_a.pk, new_reply.pk]
    conversation.switch_version(sent_a.pk)  # under A, the branch chosen there last: B2
    assert shown(conversation)[2:] == [("user", "B2"), ("assistant", "reply to B2")]
    # Nothing was lost: six user messages and replies, each kept.
    assert conversation.messages.count() == 8


def test_a_version_of_another_conversation_or_gone_is_refused(conversation):
    finished(conversation.send("Hi", "m"), "Hello")
    other = Conversation.objects.create(owner=conversation.owner)
    theirs = finished(other.send("Theirs", "m"), "Their reply")
    for action in (
        lambda: conversation.switch_version(theirs.reply.pk),
        lambda: conversation.switch_version(None),
        lambda: conversation.regenerate(theirs.reply.pk, "m"),
        lambda: conversation.edit(theirs.added[0].pk, "mine now", "m"),
    ):
        with pytest.raises(ActionRefused, match="not in this conversation"):
            action()
    assert other.messages.count() == 2 and conversation.messages.count() == 2


def test_a_page_away_during_a_switch_learns_the_branch_shown_now(conversation):
    a = finished(conversation.send("A", "m"), "reply to A")
    edited = finished(conversation.edit(a.added[0].pk, "A2", "m"), "reply to A2")
    page = [m.pk for m in edited.added]  # the page shows the edited branch...
    conversation.switch_version(a.added[0].pk)  # ...and another tab switches back
    state = conversation.sync_state(max(page), page)
    assert state.gone == page
    assert [m.pk for m in state.newer] == [m.pk for m in a.added]
    assert state.last_finished is None and state.streaming == []
    # A page that is up to date lacks nothing.
    state = conversation.sync_state(a.reply.pk, [m.pk for m in a.added])
    assert state.gone == [] and state.newer == [] and state.last_finished.pk == a.reply.pk


def test_resume_carries_an_interrupted_reply_on(conversation):
    started = conversation.send("Hi", "m")
    started.reply.finish(status=Message.Status.COMPLETE, content="Done", finish_reason="stop")
    with pytest.raises(ActionRefused, match="nothing to continue"):
        conversation.resume(started.reply.pk)
    Message.objects.filter(pk=started.reply.pk).update(status=Message.Status.INTERRUPTED)
    resumed = conversation.resume(started.reply.pk)
    assert resumed.reply.pk == started.reply.pk and resumed.reply.is_streaming
    assert resumed.added == [] and resumed.removed == []
    assert resumed.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Done"},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]


def test_sync_state_says_what_a_page_lacks(conversation):
    first = conversation.send("Hi", "m")
    first.reply.finish(status=Message.Status.COMPLETE, content="Hello")
    second = conversation.send("More", "m")
    state = conversation.sync_state(first.reply.pk, [first.added[0].pk, first.reply.pk, 10**6])
    assert state.newer == second.added
    assert state.last_finished == first.reply
    assert state.streaming == [second.reply.pk]
    assert state.gone == [10**6]


@pytest.mark.django_db(transaction=True)
def test_the_versions_migration_links_existing_messages_and_keeps_search():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from conversations.search import search

    before = [("conversations", "0012_conversation_pinned")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="migrated")
    OldMessage, OldConversation = (
        old.get_model("conversations", name) for name in ("Message", "Conversation")
    )
    ids = {}
    for title in ("one", "two"):
        conversation = OldConversation.objects.create(owner=user, title=title)
        ids[title] = [
            OldMessage.objects.create(conversation=conversation, role=role, content=f"{title} x").pk
            for role in ("user", "assistant", "user")
        ]
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    for title, (a, b, c) in ids.items():
        conversation = Conversation.objects.get(title=title)
        assert [(m.pk, m.parent_id) for m in conversation.branch()] == [(a, None), (b, a), (c, b)]
    # Full-text search still follows new messages (SQLite's triggers were made again).
    conversation = Conversation.objects.get(title="two")
    Message.objects.create(conversation=conversation, role="user", content="zebracorn")
    from django.contrib.auth import get_user_model

    owner = get_user_model().objects.get(username="migrated")
    assert [hit.conversation.pk for hit in search(owner, "zebracorn")] == [conversation.pk]
