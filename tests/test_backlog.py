"""A socket that never reads cannot hold the process's memory (chatsite/backlog.py)."""

import base64
import json
import os
import re
import socket
import struct
import time

import pytest
from live import LiveSite

from chatsite.backlog import Backlog, bounded_send
from conversations.demo import DemoModel, ServerThread
from conversations.page import CLOSE_TOO_SLOW

# --- the bound itself ------------------------------------------------------------------


def text(n: int) -> dict:
    return {"type": "websocket.send", "text": "x" * n}


def test_frames_pass_while_the_buffer_drains_and_close_once_far_behind():
    backlog = Backlog(limit=100)
    assert backlog.admit(text(1000)) == text(1000)  # the buffer is not full: no count
    backlog.pauseProducing()
    assert backlog.admit(text(60)) == text(60)
    assert backlog.admit(text(40)) == text(40)  # 100 behind: at the limit, still sent
    assert backlog.admit(text(1)) == {"type": "websocket.close", "code": CLOSE_TOO_SLOW}
    assert backlog.admit(text(1)) is None  # closing: nothing more is queued
    assert backlog.admit({"type": "websocket.close", "code": 1000}) is None


def test_a_drained_buffer_starts_the_count_again():
    backlog = Backlog(limit=100)
    backlog.pauseProducing()
    backlog.admit(text(90))
    backlog.resumeProducing()
    backlog.pauseProducing()
    assert backlog.admit(text(90)) == text(90)


def test_a_lost_connection_takes_nothing_more():
    backlog = Backlog(limit=100)
    backlog.stopProducing()
    assert backlog.admit(text(1)) is None


def test_a_send_that_is_not_daphnes_is_left_alone():
    async def send(message):
        pass

    assert bounded_send(send) is send


# --- a live site, and a client that never reads ----------------------------------------

HISTORY_MESSAGES, MESSAGE_CHARS = 40, 20_000  # about 800 kB of page per sync
BACKLOG = 1_000_000


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    upstream = ServerThread(DemoModel()).start()
    site = LiveSite(
        tmp_path_factory.mktemp("backlog"),
        upstream.base_url,
        CHAT_SOCKET_BACKLOG_BYTES=str(BACKLOG),
        CHAT_SOCKET_ACTIONS_PER_SECOND="20",
    ).start()
    yield site
    site.stop()
    upstream.stop()


def conversation_with_history(site: LiveSite) -> tuple[int, str]:
    """A long conversation of the site's user, and a session cookie of theirs."""
    script = f"""
from django.contrib.auth import get_user_model
from django.test import Client
from conversations.models import Conversation, Message
user = get_user_model().objects.get(username={site.username!r})
conversation = Conversation.objects.create(owner=user, model="m")
Message.objects.bulk_create(
    Message(conversation=conversation, role=role, content=("word " * {MESSAGE_CHARS // 5}))
    for role in ["user", "assistant"] * {HISTORY_MESSAGES // 2}
)
conversation.messages.link_in_order()
client = Client()
client.force_login(user)
print(conversation.pk, client.cookies["sessionid"].value)
"""
    out = site.manage_output("shell", "-c", script).split()
    return int(out[-2]), out[-1]


def open_websocket(site: LiveSite, path: str, session: str) -> socket.socket:
    """A websocket whose reader takes nothing after the handshake (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", site.port))
    key = base64.b64encode(os.urandom(16)).decode()
    host = f"127.0.0.1:{site.port}"
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Cookie: sessionid={session}\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: nothing after the handshake is read
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def text_frame(data: dict) -> bytes:
    payload = json.dumps(data).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


def test_a_socket_that_never_reads_is_closed_and_its_memory_returned(site):
    conversation_id, session = conversation_with_history(site)
    path = f"/ws/conversations/{conversation_id}/"
    # Warm up: one sync read whole, so the process's first-use allocations are made.
    warm = open_websocket(site, path, session)
    warm.sendall(text_frame({"action": "sync", "since": 0, "shown": []}))
    time.sleep(1)
    warm.close()
    before = rss_kib(site.process.pid)

    sock = open_websocket(site, path, session)
    closed_by_site = False
    for _ in range(200):  # up to 20 s; each sync asks for the whole conversation again
        try:
            sock.sendall(text_frame({"action": "sync", "since": 0, "shown": []}))
        except OSError:
            closed_by_site = True  # the site dropped the connection
            break
        if "fell" in (site.tmp / "daphne.log").read_text():
            break
        time.sleep(0.1)
    log = (site.tmp / "daphne.log").read_text()
    assert "closed a websocket whose reader fell" in log
    grown = rss_kib(site.process.pid) - before
    print(f"RSS grew by {grown / 1024:.1f} MiB (socket closed by the site: {closed_by_site})")
    assert grown < 60 * 1024  # the bound for a socket that never reads

    # The connection is gone: reading it ends (after what the kernel already held).
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    sock.close()

    # And the site still serves the same user at once.
    page = open_websocket(site, path, session)
    page.sendall(text_frame({"action": "stop"}))
    page.settimeout(10)
    assert page.recv(65536)  # the notice that there is nothing to stop
    page.close()
