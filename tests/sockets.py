"""Helpers for tests that talk to the consumer over a WebsocketCommunicator."""

import asyncio
import json
import re

from channels.db import database_sync_to_async


async def receive_until(communicator, predicate, seconds=5.0) -> list[str]:
    """Collect frames until one satisfies ``predicate``; return them all."""
    frames = []
    async with asyncio.timeout(seconds):
        while True:
            frame = await communicator.receive_from(seconds)
            frames.append(frame)
            if predicate(frame):
                return frames


def ends_reply(frame: str) -> bool:
    return 'data-role="assistant"' in frame and 'data-status="streaming"' not in frame


def text_of(frames: list[str]) -> str:
    """The reply's text as the page has it after applying the delta frames."""
    pieces = re.findall(
        r'<div hx-swap-oob="beforeend:#message-\d+-text">(.*?)</div>', "".join(frames), re.S
    )
    return "".join(pieces)


@database_sync_to_async
def messages_of(conversation):
    return list(conversation.messages.order_by("pk"))


async def send(communicator, **data):
    await communicator.send_to(text_data=json.dumps(data))
