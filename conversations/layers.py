"""The in-memory channel layer, made cheap per message for streaming.

Channels' InMemoryChannelLayer sweeps every channel and group for expired
entries on every send and receive, and sends to a group through one task per
member: per frame, that is work in proportion to every open socket of the
process. Here the sweep runs at most once a second and a group send is a loop.
"""

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

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            # A socket that fell this far behind recovers through a snapshot.
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)
