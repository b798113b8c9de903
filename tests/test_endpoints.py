"""Endpoints configured in the admin: encrypted keys, the grouped model picker, and each
reply written by (and recording) the server of the model chosen."""

import logging

import pytest
from django.core.management import call_command
from scripted_upstream import reasoning_stream, requests_of, text_stream
from sockets import ends_reply, messages_of, receive_until, send

from conversations import endpoints
from conversations.demo import Exchange, ServerThread
from conversations.endpoints import Endpoint, KeyUnreadable, choice
from conversations.models import Conversation, Message
from conversations.runtime import runtime

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-endpoint-secret-0123456789"


def serving_models(names, then=None, *, models_status=200):
    """An upstream listing ``names`` at GET /models (or answering ``models_status``);
    ``then`` answers the rest."""

    async def handler(exchange: Exchange) -> None:
        if exchange.method == "GET" and exchange.path.endswith("/models"):
            if models_status != 200:
                await exchange.respond_json(models_status, {"error": {"message": "no"}})
                return
            data = [{"id": name, "object": "model"} for name in names]
            await exchange.respond_json(200, {"object": "list", "data": data})
            return
        await (then or text_stream(["ok"]))(exchange)

    return handler


def headers_of(server) -> list[dict]:
    return [{k.lower(): v for k, v in e.headers.items()} for e in server.exchanges if e.body]


@pytest.fixture
def two_servers(settings):
    """The default server (alpha, beta) and another one (gamma, delta) for endpoints."""
    default = ServerThread(serving_models(["alpha", "beta"], text_stream(["From A."]))).start()
    other = ServerThread(serving_models(["gamma", "delta"], text_stream(["From B."]))).start()
    settings.OPENAI_BASE_URL = default.base_url
    settings.OPENAI_API_KEY = "sk-default"
    settings.CHAT_MODEL = ""
    settings.CHAT_GENERATE_TITLES = False
    runtime.endpoints_changed()
    yield default, other
    default.stop()
    other.stop()
    runtime.endpoints_changed()


@pytest.fixture
def lone_endpoint(settings):
    """Start an upstream for ``handler`` behind an endpoint (no default server), and a
    conversation of ``user`` on its ``model``: (the upstream, the conversation)."""
    servers = []
    settings.OPENAI_BASE_URL, settings.CHAT_GENERATE_TITLES = "", False
    runtime.endpoints_changed()

    async def start(handler, user, model, **fields):
        server = ServerThread(handler).start()
        servers.append(server)
        endpoint = await Endpoint.objects.acreate(base_url=server.base_url, **fields)
        conversation = await Conversation.objects.acreate(
            owner=user, model=choice(endpoint.pk, model)
        )
        return server, conversation

    yield start
    for server in servers:
        server.stop()
    runtime.endpoints_changed()


def make_endpoint(base_url, **fields) -> Endpoint:
    endpoint = Endpoint(name=fields.pop("name", "Other"), base_url=base_url, **fields)
    endpoint.api_key = fields.pop("api_key", KEY)
    endpoint.save()
    return endpoint


# --- keys at rest -----------------------------------------------------------------------


def test_the_api_key_is_stored_encrypted_and_rotates(settings):
    endpoint = make_endpoint("http://127.0.0.1:9/v1")
    stored = Endpoint.objects.values_list("api_key_encrypted", flat=True).get()
    assert KEY not in stored and stored.startswith("gAAAA")  # a Fernet token
    assert Endpoint.objects.get().api_key == KEY

    # Without CHAT_ENCRYPTION_KEYS the key derives from SECRET_KEY. A new key alone
    # cannot read it; put first with the old one kept, a rotation moves every key over.
    new_key = endpoints.Fernet.generate_key().decode()
    settings.CHAT_ENCRYPTION_KEYS = [new_key]
    with pytest.raises(KeyUnreadable, match="Enter the API key again"):
        Endpoint.objects.get().api_key  # noqa: B018
    settings.CHAT_ENCRYPTION_KEYS = [new_key, _derived_key(settings)]
    assert Endpoint.objects.get().api_key == KEY
    call_command("rotate_endpoint_keys")
    settings.CHAT_ENCRYPTION_KEYS = [new_key]  # the old key dropped
    assert Endpoint.objects.get(pk=endpoint.pk).api_key == KEY


def _derived_key(settings) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(b"chatsite endpoint keys:" + settings.SECRET_KEY.encode())
    return base64.urlsafe_b64encode(digest.digest()).decode()


def test_the_admin_takes_the_key_write_only(admin_client, two_servers):
    _, other = two_servers
    response = admin_client.post(
        "/admin/conversations/endpoint/add/",
        {
            "name": "Other",
            "base_url": other.base_url,
            "api_key": KEY,
            "model_names": "",
            "stream_options": "on",
            "enabled": "on",
            "position": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = Endpoint.objects.get()
    assert endpoint.api_key == KEY and KEY not in endpoint.api_key_encrypted

    page = admin_client.get(f"/admin/conversations/endpoint/{endpoint.pk}/change/").content
    page = page.decode()
    assert KEY not in page and endpoint.api_key_encrypted not in page
    assert "Set (encrypted; not shown)" in page
    assert "<code>gamma</code>, <code>delta</code>" in page  # listed by the server now
    listing = admin_client.get("/admin/conversations/endpoint/").content.decode()
    assert KEY not in listing and "those GET /models lists" in listing

    # An empty key field keeps the key; "Remove the API key" removes it.
    fields = {"name": "Other", "base_url": other.base_url, "model_names": "gamma"}
    fields |= {"stream_options": "on", "enabled": "on", "position": "0"}
    admin_client.post(f"/admin/conversations/endpoint/{endpoint.pk}/change/", fields)
    assert Endpoint.objects.get().api_key == KEY
    assert Endpoint.objects.get().configured_models() == ("gamma",)
    fields["clear_api_key"] = "on"
    admin_client.post(f"/admin/conversations/endpoint/{endpoint.pk}/change/", fields)
    assert not Endpoint.objects.get().has_api_key

    response = admin_client.post(
        "/admin/conversations/endpoint/",
        {"action": "refresh_models", "_selected_action": [endpoint.pk]},
        follow=True,
    )
    assert "Other: 2 model(s) listed." in response.content.decode()


# --- the picker ---------------------------------------------------------------------------


def test_the_picker_groups_the_models_by_server(client, user, two_servers):
    _, other = two_servers
    conversation = Conversation.objects.create(owner=user)
    client.force_login(user)
    html = client.get(conversation.get_absolute_url()).content.decode()
    assert "<optgroup" not in html  # the default server alone: a plain list
    assert '<option value="alpha" selected>' in html

    endpoint = make_endpoint(other.base_url)
    make_endpoint("http://127.0.0.1:9/v1", name="Off", enabled=False)
    html = client.get(conversation.get_absolute_url()).content.decode()
    assert '<optgroup label="Default">' in html and '<optgroup label="Other">' in html
    assert f'<option value="@{endpoint.pk}/gamma">gamma</option>' in html
    assert "Off" not in html and KEY not in html

    # Configured names are offered instead of what GET /models lists.
    endpoint.model_names = "delta\nepsilon\n"
    endpoint.save()
    html = client.get(conversation.get_absolute_url()).content.decode()
    assert f'value="@{endpoint.pk}/epsilon"' in html and f"@{endpoint.pk}/gamma" not in html


def test_a_server_without_a_model_list_offers_its_configured_names(client, user, settings):
    silent = ServerThread(serving_models([], models_status=404)).start()
    default = ServerThread(serving_models(["alpha"])).start()
    settings.OPENAI_BASE_URL, settings.CHAT_MODEL = default.base_url, ""
    runtime.endpoints_changed()
    try:
        bare = make_endpoint(silent.base_url, name="Bare")
        named = make_endpoint(silent.base_url, name="Named", model_names="local-model")
        conversation = Conversation.objects.create(owner=user)
        client.force_login(user)
        html = client.get(conversation.get_absolute_url()).content.decode()
        assert f'value="@{named.pk}/local-model"' in html
        assert f"@{bare.pk}/" not in html and '<optgroup label="Bare">' in html
    finally:
        silent.stop()
        default.stop()
        runtime.endpoints_changed()


# --- replies ------------------------------------------------------------------------------


async def test_the_chosen_endpoints_model_writes_the_reply_with_its_key(
    two_servers, user, connect, caplog
):
    default, other = two_servers
    endpoint = await Endpoint.objects.acreate(
        name="Other", base_url=other.base_url, api_key_encrypted=endpoints.encrypt(KEY)
    )
    conversation = await Conversation.objects.acreate(
        owner=user, model=choice(endpoint.pk, "gamma")
    )
    socket = await connect(conversation, user)
    with caplog.at_level(logging.DEBUG):
        await send(socket, action="send", content="Hello")
        frames = await receive_until(socket, ends_reply)
    assert "From B." in frames[-1]
    (request,) = requests_of(other.server)
    assert request["model"] == "gamma" and request["stream_options"] == {"include_usage": True}
    assert headers_of(other.server)[0]["authorization"] == f"Bearer {KEY}"
    assert requests_of(default.server) == []
    reply = (await messages_of(conversation))[-1]
    assert (reply.model, reply.endpoint_id, reply.endpoint_name) == ("gamma", endpoint.pk, "Other")
    assert reply.model_label == "gamma · Other" and "gamma · Other" in frames[-1]
    assert KEY not in caplog.text

    # Changing the model applies from the next reply, back on the default server.
    await Conversation.objects.filter(pk=conversation.pk).aupdate(model="beta")
    await send(socket, action="send", content="Again")
    await receive_until(socket, ends_reply)
    assert requests_of(default.server)[0]["model"] == "beta"
    assert headers_of(default.server)[0]["authorization"] == "Bearer sk-default"
    replies = [m for m in await messages_of(conversation) if m.role == "assistant"]
    assert [(m.model, m.endpoint_name) for m in replies] == [("gamma", "Other"), ("beta", "")]
    await socket.disconnect()


async def test_an_endpoints_options_shape_its_requests(lone_endpoint, user, connect):
    server, conversation = await lone_endpoint(
        reasoning_stream(["Think."], ["Answer."]),
        user,
        "r1",
        name="Reasoner",
        stream_options=False,
        send_reasoning=True,
    )
    socket = await connect(conversation, user)
    for content in ("One", "Two"):
        await send(socket, action="send", content=content)
        await receive_until(socket, ends_reply)
    first, second = requests_of(server.server)
    assert "stream_options" not in first and "stream_options" not in second
    assistant = [m for m in second["messages"] if m["role"] == "assistant"]
    assert assistant == [{"role": "assistant", "content": "Answer.", "reasoning_content": "Think."}]
    await socket.disconnect()


async def test_a_model_whose_endpoint_is_gone_is_refused_and_stores_nothing(
    two_servers, user, connect
):
    _, other = two_servers
    endpoint = await Endpoint.objects.acreate(name="Other", base_url=other.base_url)
    conversation = await Conversation.objects.acreate(
        owner=user, model=choice(endpoint.pk, "gamma")
    )
    socket = await connect(conversation, user)
    await send(socket, action="send", content="Hello")
    await receive_until(socket, ends_reply)

    await Endpoint.objects.filter(pk=endpoint.pk).aupdate(enabled=False)
    runtime.endpoints_changed()
    stored = await Message.objects.filter(conversation=conversation).acount()
    await send(socket, action="send", content="Still there?")
    (notice,) = await receive_until(socket, lambda frame: "notice" in frame)
    assert "no longer offered" in notice and 'data-refused="send"' in notice
    assert await Message.objects.filter(conversation=conversation).acount() == stored

    # Deleted: the replies keep its name; Continue is refused with a clear reason.
    await endpoint.adelete()
    reply = (await messages_of(conversation))[-1]
    assert (reply.endpoint_id, reply.endpoint_name) == (None, "Other")
    await Message.objects.filter(pk=reply.pk).aupdate(status=Message.Status.STOPPED)
    await send(socket, action="continue", message_id=reply.pk)
    (notice,) = await receive_until(socket, lambda frame: "notice" in frame)
    assert "no longer offered" in notice
    assert len(requests_of(other.server)) == 1
    await socket.disconnect()


async def test_an_upstream_error_never_shows_or_logs_the_key(lone_endpoint, user, connect, caplog):
    async def echo_key(exchange: Exchange) -> None:
        said = exchange.headers.get("Authorization") or exchange.headers.get("authorization")
        await exchange.respond_json(401, {"error": {"message": f"Invalid key {said}"}})

    _, conversation = await lone_endpoint(
        echo_key, user, "m", name="Strict", api_key_encrypted=endpoints.encrypt(KEY)
    )
    socket = await connect(conversation, user)
    with caplog.at_level(logging.DEBUG):
        await send(socket, action="send", content="Hello")
        frames = await receive_until(socket, ends_reply)
    reply = (await messages_of(conversation))[-1]
    assert reply.status == Message.Status.FAILED and reply.error
    assert KEY not in reply.error and KEY not in "".join(frames)
    assert KEY not in caplog.text
    await socket.disconnect()
