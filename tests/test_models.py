"""Conversation and Message: state changes as methods, rules kept by the database."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from conversations.models import Conversation, Message, model_label
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
