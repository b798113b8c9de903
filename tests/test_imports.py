"""Importing ChatGPT's data export and the site's own export: every version kept, the
branch that was shown shown again, and a bad file storing nothing."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations import imports, search
from conversations.imports import ImportRefused, read_document
from conversations.models import Conversation, ConversationImport, Message, tree_of

pytestmark = pytest.mark.django_db

T0 = 1_700_000_000.0  # 2023-11-14, seconds since 1970 as ChatGPT writes times


def node(key, parent, children, role=None, text=None, at=0.0, **extra):
    """A node of a ChatGPT mapping; without a role, one with no message (the root)."""
    message = None
    if role is not None:
        content = extra.pop("content", {"content_type": "text", "parts": [text]})
        message = {
            "id": key,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": T0 + at,
            "content": content,
            "status": "finished_successfully",
            "metadata": extra.pop("metadata", {}),
            "recipient": extra.pop("recipient", "all"),
        }
    return key, {"id": key, "message": message, "parent": parent, "children": children}


def chatgpt_conversation(current="a2", title="Leeks"):
    """A ChatGPT conversation with both kinds of branch: the first reply regenerated
    (a1, a1b), and the first message edited (u1, u2); u2's answer came after a browsing
    call and its result (c1, t1), which are not imported, and a hidden system message
    sits above both first messages."""
    mapping = dict(
        [
            node("root", None, ["sys"]),
            node(
                "sys",
                "root",
                ["u1", "u2"],
                "system",
                "",
                metadata={"is_visually_hidden_from_conversation": True},
            ),
            node("u1", "sys", ["a1", "a1b"], "user", "What is a leek?", at=10),
            node(
                "a1",
                "u1",
                [],
                "assistant",
                "An onion's cousin.",
                at=11,
                metadata={"model_slug": "gpt-4"},
            ),
            node(
                "a1b",
                "u1",
                [],
                "assistant",
                "A vegetable of the allium family.",
                at=20,
                metadata={"model_slug": "gpt-4o"},
            ),
            node("u2", "sys", ["c1"], "user", "What is a leek, really?", at=30),
            node(
                "c1",
                "u2",
                ["t1"],
                "assistant",
                "search('leek')",
                at=31,
                recipient="browser",
                content={"content_type": "code", "language": "unknown", "text": "search"},
            ),
            node("t1", "c1", ["a2"], "tool", "Leek: Allium porrum", at=32),
            node(
                "a2",
                "t1",
                ["u3"],
                "assistant",
                "Allium porrum, a **vegetable**.",
                at=33,
                metadata={"model_slug": "gpt-4o"},
            ),
            node(
                "u3",
                "a2",
                ["a3"],
                "user",
                None,
                at=40,
                content={
                    "content_type": "multimodal_text",
                    "parts": [
                        {"content_type": "image_asset_pointer", "asset_pointer": "file://x"},
                        "Is this one?",
                    ],
                },
            ),
            node("a3", "u3", [], "assistant", "Yes, that is a leek.", at=41),
        ]
    )
    return {
        "title": title,
        "create_time": T0,
        "update_time": T0 + 41,
        "mapping": mapping,
        "moderation_results": [],
        "current_node": current,
        "conversation_id": "c-1",
    }


def stored(imported, owner):
    ids = imports.store(owner.pk, imported)
    return [Conversation.objects.get(pk=pk) for pk in ids]


def shown(conversation):
    return [
        (m.role, m.content, f"{m.versions.index} / {m.versions.count}")
        for m in conversation.branch()
    ]


def tree(conversation):
    """Every message depth first, each turn's versions in order, as (role, text, its
    parent's text, "i / n" among its turn's versions, whether it is shown)."""
    messages = tree_of(conversation.messages.all())
    text = {m.pk: m.content for m in messages}
    return [
        (
            m.role,
            m.content,
            text.get(m.parent_id),
            f"{m.versions.index} / {m.versions.count}",
            m.on_branch,
        )
        for m in messages
    ]


# --- ChatGPT -----------------------------------------------------------------------------


def test_a_chatgpt_conversation_keeps_its_versions_and_shows_the_current_branch(user):
    (conversation,) = stored(read_document([chatgpt_conversation()]), user)
    assert conversation.title == "Leeks" and conversation.owner == user
    assert conversation.updated_at.timestamp() == T0 + 41
    assert shown(conversation) == [
        ("user", "What is a leek, really?", "2 / 2"),
        ("assistant", "Allium porrum, a **vegetable**.", "1 / 1"),
        ("user", "[image]\nIs this one?", "1 / 1"),
        ("assistant", "Yes, that is a leek.", "1 / 1"),
    ]
    # The system message, the browsing call and its result are left out; what followed
    # them hangs from the message above them.
    assert tree(conversation) == [
        ("user", "What is a leek?", None, "1 / 2", False),
        ("assistant", "An onion's cousin.", "What is a leek?", "1 / 2", False),
        ("assistant", "A vegetable of the allium family.", "What is a leek?", "2 / 2", False),
        ("user", "What is a leek, really?", None, "2 / 2", True),
        ("assistant", "Allium porrum, a **vegetable**.", "What is a leek, really?", "1 / 1", True),
        ("user", "[image]\nIs this one?", "Allium porrum, a **vegetable**.", "1 / 1", True),
        ("assistant", "Yes, that is a leek.", "[image]\nIs this one?", "1 / 1", True),
    ]
    replies = conversation.messages.filter(role="assistant")
    assert {m.status for m in replies} == {"complete"}
    assert [m.model for m in replies] == ["gpt-4", "gpt-4o", "gpt-4o", ""]
    first = conversation.messages.get(content="What is a leek?")
    assert first.created_at.timestamp() == T0 + 10
    assert conversation.model == ""  # new replies come from this site's model


def test_the_current_node_may_be_an_earlier_version(user):
    (conversation,) = stored(read_document(chatgpt_conversation(current="a1")), user)
    assert shown(conversation) == [
        ("user", "What is a leek?", "1 / 2"),
        ("assistant", "An onion's cousin.", "1 / 2"),
    ]
    # Switching versions on the site works on what was imported.
    regenerated = conversation.messages.get(content="A vegetable of the allium family.")
    conversation.switch_version(regenerated.pk)
    assert [text for _, text, _ in shown(conversation)] == [
        "What is a leek?",
        "A vegetable of the allium family.",
    ]


def test_a_reply_continues_an_imported_branch(user):
    (conversation,) = stored(read_document([chatgpt_conversation()]), user)
    started = conversation.send("And how do I cook it?", "site-model")
    assert [m["content"] for m in started.prompt] == [
        "What is a leek, really?",
        "Allium porrum, a **vegetable**.",
        "[image]\nIs this one?",
        "Yes, that is a leek.",
        "And how do I cook it?",
    ]


def test_a_conversation_without_a_title_is_named_by_its_first_message(user):
    document = chatgpt_conversation(title=None)
    (conversation,) = stored(read_document(document), user)
    assert conversation.title == "What is a leek, really?"


def test_long_messages_are_stored_as_they_are(user, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    document = chatgpt_conversation()
    document["mapping"]["a3"]["message"]["content"]["parts"] = ["x" * 5000]
    (conversation,) = stored(read_document(document), user)
    assert conversation.messages.get(role="assistant", content__startswith="xxx").content == (
        "x" * 5000
    )


def test_the_same_queries_store_2_or_40_conversations(user):
    def queries(count):
        imported = read_document([chatgpt_conversation(title=f"n{n}") for n in range(count)])
        with CaptureQueriesContext(connection) as captured:
            imports.store(user.pk, imported)
        return len(captured)

    few = queries(2)
    # The transaction's two, the conversations, and one per turn of the longest (4).
    assert few == 2 + 1 + 4 and queries(40) == few
    assert Message.objects.filter(conversation__owner=user).count() == 42 * 7


def test_imported_messages_are_found_by_search(user, other_user):
    stored(read_document([chatgpt_conversation()]), user)
    (hit,) = search.search(user, "porrum")
    assert hit.conversation.title == "Leeks" and "Allium porrum" in hit.snippet
    assert search.search(user, "cousin")  # an earlier version too
    assert search.search(other_user, "porrum") == []


# --- the site's own export ---------------------------------------------------------------


def test_the_sites_export_comes_back_with_its_versions_and_branch(conversation, other_user):
    first = conversation.send("Tell me a joke", "m")
    first.reply.finish(status="complete", content="The first joke.", finish_reason="stop")
    again = conversation.regenerate(first.reply.pk, "m")
    again.reply.finish(
        status="stopped", content="The second", reasoning="Hmm.", finish_reason="", usage=None
    )
    edited = conversation.edit(first.added[0].pk, "Tell me a riddle", "m")
    edited.reply.finish(status="complete", content="A riddle.", finish_reason="stop")
    conversation.switch_version(first.added[0].pk)  # the joke's branch, its second reply
    conversation.refresh_from_db()
    exported = json.dumps(conversation.export(), cls=DjangoJSONEncoder)

    (copy,) = stored(read_document(json.loads(exported)), other_user)
    assert copy.owner == other_user and copy.pk != conversation.pk
    assert tree(copy) == tree(conversation)
    assert (
        shown(copy)
        == shown(conversation)
        == [
            ("user", "Tell me a joke", "1 / 2"),
            ("assistant", "The second", "2 / 2"),
        ]
    )
    (reply,) = [m for m in copy.branch() if m.role == "assistant"]
    assert (reply.status, reply.reasoning, reply.model) == ("stopped", "Hmm.", "test-model")
    assert reply.can_continue
    assert (copy.title, copy.model) == (conversation.title, conversation.model)


def test_the_admins_export_of_several_conversations_imports(conversation, user):
    started = conversation.send("hello", "m")
    started.reply.finish(status="complete", content="hi", finish_reason="stop")
    document = {"exported_by": "rita", "conversations": [conversation.export()] * 2}
    document = json.loads(json.dumps(document, cls=DjangoJSONEncoder))
    copies = stored(read_document(document), user)
    assert [shown(c) for c in copies] == [shown(conversation)] * 2


def test_a_reply_exported_while_it_was_written_comes_back_interrupted(conversation, user):
    conversation.send("hello", "m")
    document = json.loads(json.dumps(conversation.export(), cls=DjangoJSONEncoder))
    (copy,) = stored(read_document(document), user)
    assert [m.status for m in copy.branch()] == ["complete", "interrupted"]


# --- bad files ---------------------------------------------------------------------------


def refusal(document) -> str:
    with pytest.raises(ImportRefused) as refused:
        read_document(document)
    return str(refused.value)


def test_malformed_documents_are_refused_with_what_is_wrong():
    looped = chatgpt_conversation()
    looped["mapping"]["u1"]["parent"] = "a1"
    assert "loop" in refusal([looped])
    orphan = chatgpt_conversation()
    orphan["mapping"]["a2"]["parent"] = "gone"
    assert "message a2 follows message gone, which is not in the file" in refusal([orphan])
    assert "neither a conversation nor a list" in refusal(42)
    assert "no conversations" in refusal([])
    assert "Conversation 2 is not a JSON object" in refusal([chatgpt_conversation(), "x"])
    assert "neither a ChatGPT conversation" in refusal({"title": "x"})
    parts = chatgpt_conversation()
    parts["mapping"]["u1"]["message"]["content"]["parts"] = "What"
    assert "“Leeks”" in refusal(parts) and "not a list" in refusal(parts)
    bad_time = chatgpt_conversation()
    bad_time["mapping"]["a1"]["message"]["create_time"] = "yesterday"
    assert "not a number" in refusal(bad_time)
    site = {"title": "x", "messages": [{"id": 1, "role": "user", "content": 5}]}
    assert "content is not text" in refusal(site)
    site = {"messages": [{"id": 1, "role": "user", "content": "a", "created_at": "soon"}]}
    assert "created_at is not a date and time" in refusal(site)


@pytest.mark.django_db(transaction=True)
def test_an_error_while_storing_stores_nothing(user, monkeypatch):
    imported = read_document([chatgpt_conversation(), chatgpt_conversation()])

    calls, bulk_create = [], Message.objects.bulk_create

    def broken(rows, *args, **kwargs):  # the second turn's messages fail
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return bulk_create(rows, *args, **kwargs)

    monkeypatch.setattr(Message.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        imports.store(user.pk, imported)
    assert calls == [4, 6]  # the first messages were written, then rolled back
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert search.search(user, "porrum") == [] and search.search(user, "leek") == []


@pytest.mark.django_db(transaction=True)
def test_a_stop_abandons_the_import_and_stores_nothing(user, tmp_path):
    import threading

    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([chatgpt_conversation()]))
    job = ConversationImport.objects.create(owner=user, file_name="conversations.json")
    stopping = threading.Event()
    stopping.set()
    imports.run(job.pk, str(path), stopping)
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", imports.STOPPED)
    assert not Conversation.objects.exists() and not path.exists()


# --- the pages ---------------------------------------------------------------------------


@pytest.fixture
def uploaded(monkeypatch):
    """The import threads the views start, to wait for."""
    threads = []
    start = imports.start

    def recorded(job, path):
        threads.append(start(job, path))
        return threads[-1]

    monkeypatch.setattr(imports, "start", recorded)
    return threads


def upload(client, content: bytes, name="conversations.json"):
    return client.post("/import/", {"file": SimpleUploadedFile(name, content)})


@pytest.mark.django_db(transaction=True)
def test_uploading_a_file_imports_it_in_the_background(client, user, uploaded):
    client.force_login(user)
    page = client.get("/import/").text
    assert 'type="file"' in page and 'name="file"' in page
    assert 'href="/import/"' in client.get("/").text  # linked from the list
    response = upload(client, json.dumps([chatgpt_conversation()] * 2).encode())
    assert response.status_code == 302
    (thread,) = uploaded
    thread.join(10)
    job = ConversationImport.objects.get(owner=user)
    assert response["Location"] == f"/import/{job.pk}/"
    assert (job.status, job.total, job.done) == ("done", 2, 2)
    progress = client.get(response["Location"], headers={"HX-Request": "true"}).text
    assert "Imported 2 conversations." in progress and "hx-trigger" not in progress
    for pk in job.conversation_ids:
        assert f'href="/c/{pk}/"' in progress
        assert Conversation.objects.get(pk=pk).owner == user
    conversation = client.get(f"/c/{job.conversation_ids[0]}/").text
    assert conversation.count('class="version-label">2 / 2<') == 1


@pytest.mark.django_db(transaction=True)
def test_a_malformed_file_gets_a_clear_message_and_stores_nothing(client, user, uploaded):
    client.force_login(user)
    for content, said in [
        (b"{not json", "The file is not valid JSON (Expecting property name"),
        (b"\xc3\x28[]", "The file is not text (UTF-8 JSON was expected)."),
        (b"", "The file is empty."),
        (b'{"title": "x", "mapping": []}', "its “mapping” is not an object"),
    ]:
        response = upload(client, content)
        uploaded[-1].join(10)
        html = client.get(response["Location"]).text
        assert said in html and "Nothing was imported." in html and 'role="alert"' in html
        assert "every 1s" not in html
    assert not Conversation.objects.exists()
    assert ConversationImport.objects.filter(status="failed").count() == 4


def test_no_file_or_a_file_too_big_is_refused_at_once(client, user, settings):
    client.force_login(user)
    response = client.post("/import/", {})
    assert response.status_code == 400 and "Choose a file" in response.text
    settings.CHAT_IMPORT_MAX_BYTES = 1000
    response = upload(client, b"[" + b" " * 2000 + b"]")
    assert response.status_code == 413
    assert "the largest accepted is" in response.text and "Nothing was imported." in response.text
    assert not ConversationImport.objects.exists()


def test_the_progress_fragment_polls_until_the_import_ends(client, user):
    job = ConversationImport.objects.create(
        owner=user, file_name="conversations.json", status="running", total=10, done=3
    )
    client.force_login(user)
    url = f"/import/{job.pk}/"
    fragment = client.get(url, headers={"HX-Request": "true"}).text
    assert fragment.lstrip().startswith('<section id="import-progress"')
    assert "3 of 10 conversations" in fragment
    assert 'hx-trigger="every 1s"' in fragment and f'hx-get="{url}"' in fragment
    assert "<html" not in fragment
    ConversationImport.objects.filter(pk=job.pk).update(storing=True, done=10)
    assert "Storing 10 conversations" in client.get(url, headers={"HX-Request": "true"}).text
    page = client.get(url).text
    assert "<html" in page and 'id="import-progress"' in page


def test_an_import_whose_process_is_gone_is_called_failed(client, user, settings):
    settings.CHAT_IMPORT_STALE_AFTER = 60
    job = ConversationImport.objects.create(owner=user, file_name="c.json", status="running")
    client.force_login(user)
    assert "every 1s" in client.get(f"/import/{job.pk}/").text  # still moving, perhaps
    ConversationImport.objects.filter(pk=job.pk).update(
        updated_at=job.updated_at.replace(year=2020)
    )
    html = client.get(f"/import/{job.pk}/").text
    assert "The site stopped during the import. Nothing was imported." in html
    job.refresh_from_db()
    assert job.status == "failed"


def test_another_users_import_is_not_visible(client, user, other_user):
    (conversation,) = stored(read_document([chatgpt_conversation()]), user)
    job = ConversationImport.objects.create(
        owner=user, file_name="mine.json", status="done", conversation_ids=[conversation.pk]
    )
    client.force_login(other_user)
    assert client.get(f"/import/{job.pk}/").status_code == 404
    assert "mine.json" not in client.get("/import/").text
    assert client.get(conversation.get_absolute_url()).status_code == 404
    client.force_login(user)
    assert "mine.json" in client.get("/import/").text
