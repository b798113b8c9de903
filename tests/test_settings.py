"""A conversation's model, instructions and parameters, and the presets to start one from."""

import pytest
from scripted_upstream import requests_of, text_stream
from sockets import ends_reply, messages_of, receive_until, send

from conversations.demo import ChatCompletionsServer, Exchange, ServerThread
from conversations.models import Conversation, Preset

pytestmark = pytest.mark.django_db(transaction=True)


def with_models(names, then):
    """An upstream listing ``names`` at GET /models; ``then`` answers the rest."""

    async def handler(exchange: Exchange) -> None:
        if exchange.method == "GET" and exchange.path.endswith("/models"):
            data = [{"id": name, "object": "model"} for name in names]
            await exchange.respond_json(200, {"object": "list", "data": data})
            return
        await then(exchange)

    return handler


@pytest.fixture
def model_server(settings):
    from conversations.runtime import runtime

    thread = ServerThread(with_models(["alpha-7b", "beta-70b"], text_stream(["ok"]))).start()
    settings.OPENAI_BASE_URL = thread.base_url
    settings.CHAT_MODEL = ""
    runtime._models.clear()
    yield thread
    thread.stop()
    runtime._models.clear()


def settings_url(conversation):
    return f"/c/{conversation.pk}/settings/"


def test_the_page_offers_the_servers_models_and_the_settings(client, user, model_server):
    conversation = Conversation.objects.create(owner=user)
    client.force_login(user)
    html = client.get(conversation.get_absolute_url()).content.decode()
    assert '<select name="model"' in html
    assert '<option value="alpha-7b" selected>' in html and '<option value="beta-70b">' in html
    assert '<textarea name="system_prompt"' in html and "<summary>Settings</summary>" in html


def test_settings_are_saved_and_bad_values_are_refused(client, user, model_server):
    conversation = Conversation.objects.create(owner=user, model="alpha-7b")
    client.force_login(user)
    fields = {
        "model": "beta-70b",
        "system_prompt": "Answer in French.",
        "temperature": "0.3",
        "top_p": "0.9",
        "max_tokens": "256",
    }
    html = client.post(settings_url(conversation), fields).content.decode()
    assert "it applies from the next reply" in html
    conversation.refresh_from_db()
    assert (conversation.model, conversation.system_prompt) == ("beta-70b", "Answer in French.")
    assert conversation.parameters() == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 256}

    refused = {**fields, "temperature": "5", "model": "gamma-unknown", "max_tokens": "-1"}
    html = client.post(settings_url(conversation), refused).content.decode()
    assert "less than or equal to 2" in html and "Select a valid choice" in html
    assert "greater than or equal to 1" in html
    conversation.refresh_from_db()
    assert conversation.temperature == 0.3 and conversation.model == "beta-70b"

    # Emptied parameters go back to the server's defaults.
    blank = {**fields, "temperature": "", "top_p": "", "max_tokens": ""}
    client.post(settings_url(conversation), blank)
    conversation.refresh_from_db()
    assert conversation.parameters() == {}


def test_a_model_no_longer_listed_stays_chosen(client, user, model_server):
    conversation = Conversation.objects.create(owner=user, model="retired-1")
    client.force_login(user)
    html = client.get(conversation.get_absolute_url()).content.decode()
    assert '<option value="retired-1" selected>' in html


def test_nobody_changes_another_persons_settings(client, other_user, conversation):
    client.force_login(other_user)
    response = client.post(settings_url(conversation), {"model": "x", "system_prompt": "evil"})
    assert response.status_code == 404
    conversation.refresh_from_db()
    assert conversation.system_prompt == ""


def test_a_preset_is_kept_and_starts_a_conversation(client, user, other_user, model_server):
    conversation = Conversation.objects.create(owner=user)
    client.force_login(user)
    fields = {
        "model": "beta-70b",
        "system_prompt": "You are terse.",
        "temperature": "0.1",
        "preset_name": "Terse",
    }
    html = client.post(settings_url(conversation), {**fields, "opened": "1"}).content.decode()
    assert "kept as the preset “Terse”" in html and '<details class="settings-panel" open>' in html
    preset = Preset.objects.get(owner=user, name="Terse")
    assert (preset.model, preset.system_prompt, preset.temperature) == (
        "beta-70b",
        "You are terse.",
        0.1,
    )
    assert f'value="{preset.pk}">Terse</option>' in client.get("/").content.decode()

    # The preset waits in the session for the new conversation's first message.
    response = client.post("/c/new/", {"preset": str(preset.pk)})
    assert response["Location"] == "/c/new/"
    assert client.session[Conversation.DRAFT] == {
        "model": "beta-70b",
        "system_prompt": "You are terse.",
        "temperature": 0.1,
        "top_p": None,
        "max_tokens": None,
    }
    html = client.get("/c/new/").content.decode()
    assert '<option value="beta-70b" selected>' in html and "You are terse.</textarea>" in html
    assert list(Conversation.objects.filter(owner=user)) == [conversation]  # none stored
    # An id that is not a number, or not theirs, starts a plain conversation.
    for bad in ("abc", "9" * 30, "-1"):
        response = client.post("/c/new/", {"preset": bad})
        assert response.status_code == 302 and client.session[Conversation.DRAFT] == {}
    client.force_login(other_user)
    client.post("/c/new/", {"preset": str(preset.pk)})
    assert client.session[Conversation.DRAFT] == {}


async def test_the_model_prompt_and_parameters_reach_the_upstream_and_the_reply_records_its_model(
    start_upstream, user, connect
):
    server: ChatCompletionsServer = await start_upstream(text_stream(["Bonjour."]))
    conversation = await Conversation.objects.acreate(
        owner=user,
        model="beta-70b",
        system_prompt="Answer in French.",
        temperature=0.2,
        top_p=0.5,
        max_tokens=64,
    )
    socket = await connect(conversation, user)
    await send(socket, action="send", content="Hello")
    await receive_until(socket, ends_reply)
    request = requests_of(server)[0]
    assert request["model"] == "beta-70b"
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert (request["temperature"], request["top_p"], request["max_tokens"]) == (0.2, 0.5, 64)

    # A change applies from the next reply; each reply keeps the model that wrote it.
    await Conversation.objects.filter(pk=conversation.pk).aupdate(model="alpha-7b", top_p=None)
    await send(socket, action="send", content="Again")
    await receive_until(socket, ends_reply)
    second = requests_of(server)[1]
    assert second["model"] == "alpha-7b" and "top_p" not in second
    replies = [m for m in await messages_of(conversation) if m.role == "assistant"]
    assert [m.model for m in replies] == ["beta-70b", "alpha-7b"]
    await socket.disconnect()
