"""The upstream client's sockets (conversations/upstream/network.py): httpcore's HTTP on a
plain asyncio protocol, over TLS, with flow control, timeouts and a server going away."""

import asyncio
import contextlib
import datetime
import ipaddress
import itertools
import json
import socket
import ssl

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scripted_upstream import numbered_words, text_stream

from conversations import upstream
from conversations.demo import ChatCompletionsServer, chunk
from conversations.upstream import Finish, TextDelta, stream_chat
from conversations.upstream.network import HIGH_WATER, AsyncioBackend

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


class KeptAliveServer:
    """Streams ``words`` SSE chunks, ``gap`` seconds apart, to each request, keeping the
    connection for the next one (the demo server closes after each); counts connections."""

    def __init__(self, words: list[str], gap: float, tls: ssl.SSLContext | None = None):
        self.words, self.gap, self.tls = words, gap, tls
        self.connections = 0
        self.requests = 0

    async def start(self) -> "KeptAliveServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.base_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1"
        return self

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for word in self.words:
                    await asyncio.sleep(self.gap)
                    writer.write(chunked(chunk("c1", "m", {"content": word})))
                writer.write(
                    chunked(chunk("c1", "m", {}, "stop")) + chunked("[DONE]") + b"0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def chunked(payload) -> bytes:
    data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize("transport", ["httpcore", "aiohttp"])
async def test_a_reply_streams_over_tls_and_its_connection_is_kept(
    certificate, monkeypatch, transport
):
    cert_file, key_file = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    server = await KeptAliveServer(numbered_words(300), 0.0005, tls=tls).start()
    monkeypatch.setenv("SSL_CERT_FILE", cert_file)  # httpx trusts it, as an operator's CA
    try:
        async with upstream.new_client(transport) as client:
            for _ in range(2):
                events = [
                    e
                    async for e in stream_chat(
                        server.base_url, client=client, model="m", messages=MESSAGES
                    )
                ]
                text = "".join(e.text for e in events if isinstance(e, TextDelta))
                assert text == "".join(numbered_words(300))
                assert Finish("stop") in events
    finally:
        await server.close()
    assert server.base_url.startswith("https://")
    assert (server.requests, server.connections) == (2, 1)  # one TLS handshake for both


async def test_a_certificate_nobody_trusts_is_refused(certificate):
    cert_file, key_file = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    server = await ChatCompletionsServer(text_stream(["never"]), tls=tls).start()
    try:
        async with upstream.new_client() as client:
            with pytest.raises(upstream.ConnectError, match="TLS handshake failed"):
                async for _ in stream_chat(
                    server.base_url, client=client, model="m", messages=MESSAGES
                ):
                    pass
    finally:
        await server.close()
    assert server.exchanges == []


@contextlib.asynccontextmanager
async def connected(serve):
    """A stream of the site's backend connected to a loopback server running ``serve``."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    try:
        yield stream
    finally:
        await stream.aclose()
        server.close()
        await server.wait_closed()


def writes_once(release: asyncio.Event, data: bytes):
    """A server that says nothing until ``release`` is set, then ``data``, then closes."""

    async def serve(reader, writer):
        await release.wait()
        writer.write(data)
        await writer.drain()
        writer.close()

    return serve


async def test_reading_pauses_while_a_megabyte_waits_and_every_byte_arrives_in_order():
    sent = bytes(range(256)) * (4 * HIGH_WATER // 256)  # 4 MiB

    async def flood(reader, writer):
        writer.write(sent)
        await writer.drain()
        writer.close()

    async with connected(flood) as stream:
        await asyncio.sleep(0.3)  # nobody reads: the protocol stops reading past HIGH_WATER
        assert stream._read_paused
        assert HIGH_WATER < stream._buffered < len(sent)
        received = bytearray()
        while data := await stream.read(65536, timeout=5):
            assert len(data) <= 65536
            received += data
        assert received == sent
        assert not stream._read_paused


async def test_a_read_with_nothing_to_read_times_out_and_a_closed_socket_reads_empty():
    release = asyncio.Event()
    async with connected(writes_once(release, b"last words")) as stream:
        assert stream.get_extra_info("is_readable") is False
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.1)
        release.set()
        assert await stream.read(4, timeout=5) == b"last"  # a read takes at most max_bytes
        assert await stream.read(100, timeout=5) == b" words"
        assert await stream.read(100, timeout=5) == b""
        assert stream.get_extra_info("is_readable") is True  # gone: not kept for reuse


async def test_a_refused_connection_is_a_connect_error_with_its_cause():
    with socket_that_refuses() as port, pytest.raises(httpcore.ConnectError) as info:
        await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


@contextlib.contextmanager
def socket_that_refuses():
    """A port nothing listens on, kept bound so no other test takes it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_paced_reply_is_read_in_batches_after_its_first_events():
    """100 words 5 ms apart: read as they come, then woken once per 0.1 s; every word
    arrives, in order, and the next request on the same connection starts unpaced."""
    server = await KeptAliveServer(numbered_words(100), 0.005).start()
    loop = asyncio.get_running_loop()

    async def read(client, pace) -> list[tuple[float, str]]:
        events = stream_chat(
            server.base_url, client=client, model="m", messages=MESSAGES, pace=pace
        )
        return [(loop.time(), e.text) async for e in events if isinstance(e, TextDelta)]

    try:
        async with upstream.new_client() as client:
            paced = await read(client, lambda: 0.1)
            unpaced = await read(client, None)
    finally:
        await server.close()
    assert (server.requests, server.connections) == (2, 1)
    for words in (paced, unpaced):
        assert "".join(text for _, text in words) == "".join(numbered_words(100))
    assert 4 <= wakes(paced) <= 12  # 0.5 s at one wake per 0.1 s, the first ones at once
    assert wakes(unpaced) > 50


def wakes(words: list[tuple[float, str]]) -> int:
    """Reads that woke the reader: events of one read follow each other within microseconds,
    and words are written 5 ms apart."""
    return 1 + sum(b - a > 0.002 for (a, _), (b, _) in itertools.pairwise(words))


async def test_a_read_woken_with_nothing_to_read_waits_on():
    """An empty read means the server closed: a wake without data (as a late pacer's
    would be) must not end the response."""
    release = asyncio.Event()
    async with connected(writes_once(release, b"data")) as stream:
        reading = asyncio.create_task(stream.read(100, timeout=5))
        await asyncio.sleep(0.05)
        stream._wake()
        await asyncio.sleep(0.05)
        assert not reading.done()
        release.set()
        assert await reading == b"data"


async def test_a_cookie_an_upstream_sets_never_goes_out_again():
    """One client serves every user: what one reply's upstream sets is not sent with the
    next request (another user's, perhaps)."""

    async def sets_a_cookie(exchange):
        await exchange.start(headers={"Set-Cookie": "session=abc123; Path=/"})
        await exchange.send_event(chunk("c1", "m", {"content": "hi"}, "stop"))
        await exchange.send_event("[DONE]")

    server = await ChatCompletionsServer(sets_a_cookie).start()
    try:
        async with upstream.new_client() as client:
            for _ in range(2):
                async for _event in stream_chat(
                    server.base_url, client=client, model="m", messages=MESSAGES
                ):
                    pass
            assert not client.cookies
    finally:
        await server.close()
    assert [e.headers.get("cookie") for e in server.exchanges] == [None, None]


async def test_a_whole_answer_streamed_anyway_leaves_its_connection_kept():
    """A server that streams a title asked for whole: read to [DONE] and the body's end,
    its connection serves the next request."""
    server = await KeptAliveServer(["Why ", "the sky ", "is blue"], 0.001).start()
    try:
        async with upstream.new_client() as client:
            for _ in range(2):
                answer = await upstream.complete_chat(
                    server.base_url, client=client, model="m", messages=MESSAGES
                )
                assert answer == "Why the sky is blue"
    finally:
        await server.close()
    assert (server.requests, server.connections) == (2, 1)
