"""The in-memory channel layer, made cheap per message for streaming.

Channels' InMemoryChannelLayer sweeps every channel and group for expired
entries on every send and receive, and sends to a group through one task per
member: per frame, that is work in proportion to every open socket of the
process. Here the sweep runs at most once a second and a group send is a loop.
Channels also deep-copies every message for every receiver; the site's events hold
strings, numbers and lists of strings that no receiver changes, so a shallow copy
does (the copy was a tenth of the publisher's time in a profile at 100 replies).
"""

import asyncio
import contextlib
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    sweep_interval = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _clean_expired(self):
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval
            super()._clean_expired()

    async def send(self, channel, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_channel_name(channel)
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        try:
            queue.put_nowait((time.time() + self.expiry, dict(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            # A socket that fell this far behind recovers through a snapshot.
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)
