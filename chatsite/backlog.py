"""A bound on what waits to be sent to a websocket whose reader does not keep up.

Twisted buffers whatever is written to a connection, without limit: a page that
never reads would hold the process's memory for as long as its socket lives. So
under Daphne each websocket's ``send`` watches its transport's buffer, as a Twisted
streaming producer, which is told when the buffer fills and when it has drained. Once
more than ``CHAT_SOCKET_BACKLOG_BYTES`` have been written while the buffer was full,
the socket is closed with ``CLOSE_TOO_SLOW`` and nothing more is queued for it;
Autobahn drops the connection, and its buffers, if the close is not answered within
a second. A page that was only slow reconnects and catches up from snapshots.

The same ``send`` closes with 1001 when the site shuts down, which Daphne cannot.

Elsewhere (Channels' test communicators, another server) ``send`` is left as it is.
"""

import functools
import logging

from django.conf import settings
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from conversations.page import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW

log = logging.getLogger(__name__)


@implementer(IPushProducer)
class Backlog:
    """What one socket has queued past its transport's full buffer."""

    def __init__(self, limit: int):
        self.limit = limit
        self.full = False  # the transport's buffer is over its size (Twisted's 64 KiB)
        self.queued = 0  # characters sent since it filled
        self.closing = False

    # Twisted calls these on the reactor thread, which is the event loop's thread.

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full, self.queued = False, 0

    def stopProducing(self) -> None:
        self.closing = True  # the connection is gone

    def admit(self, message: dict) -> dict | None:
        """``message``, the close that replaces it once over the limit, or None (dropped)."""
        if self.closing:
            return None
        if message.get("type") != "websocket.send" or not self.full:
            return message
        self.queued += len(message.get("text") or message.get("bytes") or "")
        if self.queued <= self.limit:
            return message
        self.closing = True
        log.warning("closed a websocket whose reader fell %d characters behind", self.queued)
        return {"type": "websocket.close", "code": CLOSE_TOO_SLOW}


def _daphne_protocol(send):
    """The Autobahn protocol behind Daphne's ``send`` (``partial(handle_reply, protocol)``)."""
    if isinstance(send, functools.partial) and send.args:
        protocol = send.args[0]
        if getattr(protocol, "transport", None) is not None and hasattr(
            protocol, "registerProducer"
        ):
            return protocol
    return None


def _watch(protocol, backlog: Backlog) -> bool:
    """Have ``backlog`` told when the socket's send buffer fills and drains."""
    # Daphne upgrades an HTTP connection to a websocket: the HTTPChannel stays the
    # transport's producer, and passes the buffer's pause and resume on to a producer
    # registered with it. Elsewhere the protocol registers one with its transport.
    for consumer in (getattr(protocol.transport, "producer", None), protocol):
        if consumer is None or not hasattr(consumer, "registerProducer"):
            continue
        try:
            consumer.registerProducer(backlog, True)
        except RuntimeError:  # it has a producer already
            continue
        return True
    log.info("a websocket's send buffer cannot be watched: its backlog is not bounded")
    return False


def bounded_send(send):
    """``send``, refusing to queue more than the backlog limit for a slow reader."""
    protocol = _daphne_protocol(send)
    if protocol is None:
        return send
    backlog = Backlog(settings.CHAT_SOCKET_BACKLOG_BYTES)
    if not _watch(protocol, backlog):
        return send

    async def send_within_backlog(message):
        message = backlog.admit(message)
        if message is None:
            return
        if message.get("code") == CLOSE_GOING_AWAY and message["type"] == "websocket.close":
            # Autobahn's sendClose, which Daphne calls, takes only 1000 and 3000-4999; a
            # server that goes away says 1001 (RFC 6455 7.4.1) in the protocol's own frame.
            if protocol.state == protocol.STATE_OPEN:
                backlog.closing = True
                protocol.sendCloseFrame(code=CLOSE_GOING_AWAY, isReply=False)
            return
        await send(message)

    return send_within_backlog


class BoundedBacklog:
    """ASGI middleware: bound what is queued for each websocket (see the module's text)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            send = bounded_send(send)
        return await self.application(scope, receive, send)
