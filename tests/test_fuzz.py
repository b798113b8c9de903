"""Generated frames thrown at a live consumer: the socket stays usable, nothing odd is stored."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sockets import SITE_ORIGIN, session_cookie, socket_to

from conversations.demo import DemoModel, ServerThread
from conversations.models import UNSTORABLE, Message
from conversations.runtime import runtime

pytestmark = pytest.mark.django_db(transaction=True)

ACTIONS = ["send", "stop", "sync", "continue", "regenerate"]
# Every code point, lone surrogates and NUL included (as JSON escapes they reach the server).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
    ["\ud800", "x\udfffy", "nul\x00", "\u2028", "é" * 3]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS) | VALUES},
    optional={
        "content": ANY_TEXT | VALUES,
        "message_id": VALUES,
        "since": VALUES,
        "shown": st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=20) | VALUES,
        "HEADERS": VALUES,
    },
)
FRAMES = st.one_of(
    FIELDS.map(lambda frame: ("text", json.dumps(frame))),
    ANY_TEXT.map(lambda content: ("text", json.dumps({"action": "send", "content": content}))),
    VALUES.map(lambda value: ("text", json.dumps(value))),
    # A websocket text frame is UTF-8 (so no lone surrogate raw), and not empty here:
    # the test client cannot send an empty one.
    ANY_TEXT.map(lambda text: text.encode("utf-8", "replace").decode())
    .filter(bool)
    .map(lambda text: ("text", text)),
    st.integers(min_value=1, max_value=50_000).map(lambda depth: ("text", "[" * depth)),
    st.binary(min_size=1, max_size=20).map(lambda data: ("bytes", data)),
)


@pytest.fixture
def demo_upstream(settings):
    thread = ServerThread(DemoModel(tokens_per_second=0)).start()
    settings.OPENAI_BASE_URL = thread.base_url
    settings.CHAT_MESSAGES_PER_MINUTE = 1000
    yield thread
    thread.stop()


async def throw(conversation, user, frames) -> list[str]:
    channel_layers.backends.clear()  # a layer bound to this example's event loop
    socket = socket_to(conversation.pk, [*SITE_ORIGIN, (b"cookie", await session_cookie(user))])
    connected, _ = await socket.connect()
    assert connected
    sent = []
    for kind, frame in frames:
        if kind == "bytes":
            await socket.send_to(bytes_data=frame)
        else:
            await socket.send_to(text_data=frame)
            try:
                data = json.loads(frame)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict) and data.get("action") == "send":
                sent.append(data.get("content"))
    # Still usable: an action after all of them is answered.
    await socket.send_to(text_data=json.dumps({"action": "probe"}))
    async with asyncio.timeout(10):
        while "Unknown action &#x27;probe&#x27;" not in await socket.receive_from(10):
            pass
    async with asyncio.timeout(10):
        while runtime.replies:  # noqa: ASYNC110 (the replies of this example end)
            await asyncio.sleep(0.01)
    await socket.disconnect()
    return sent


@examples(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(FRAMES, min_size=1, max_size=8))
def test_no_frame_closes_the_socket_or_stores_what_it_should_not(
    frames, demo_upstream, conversation, user
):
    conversation.messages.all().delete()  # each example starts from an empty conversation
    sent = asyncio.run(throw(conversation, user, frames))
    stored = list(Message.objects.filter(conversation=conversation))
    assert not [m for m in stored if m.is_streaming]  # every reply ended
    cleaned = {UNSTORABLE.sub("\ufffd", c) for c in sent if isinstance(c, str)}
    for message in stored:
        assert message.role in (Message.Role.USER, Message.Role.ASSISTANT)
        assert not UNSTORABLE.search(message.content)
        if message.role == Message.Role.USER:
            assert message.content in cleaned and message.content.strip()


async def test_the_frames_the_issue_names_each_get_a_notice(conversation, user, connect):
    socket = await connect(conversation, user)
    for frame in [
        '{"action": "send", "content": "\\ud800 lone"}',  # stored with U+FFFD (no upstream)
        "[" * 30_000,
        '{"action": {"nested": true}}',
        '{"action": "regenerate", "message_id": 18446744073709551616}',
        '{"action": "sync", "since": 18446744073709551616, "shown": [18446744073709551617]}',
    ]:
        await socket.send_to(text_data=frame)
    await socket.send_to(text_data='{"action": "probe"}')
    frames = []
    async with asyncio.timeout(10):
        while "probe" not in (frames[-1] if frames else ""):
            frames.append(await socket.receive_from(10))
    assert any("not valid JSON" in f for f in frames)
    assert any("Unknown action" in f and "nested" in f for f in frames)
    assert any("not in this conversation any more" in f for f in frames)
    (sent, *_) = await database_sync_to_async(list)(conversation.messages.order_by("pk"))
    assert sent.content == "\ufffd lone"
    await socket.disconnect()
