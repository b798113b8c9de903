"""What one frame costs in the channel layer: the in-memory layer against Redis pub/sub.

    .venv/bin/python bench/layers.py [--groups 100] [--rate 20] [--seconds 5] [--redis URL]

Each group stands for a conversation with one open socket: a receiver loops on
``layer.receive`` as a consumer does, and one sender ``group_send``s a reply's frame
(``--chars`` of HTML) to every group ``--rate`` times a second, as publishers do. The
figure is the CPU per delivered frame: this process's (``time.process_time``: sending and
receiving, the site's share) and, for Redis, the redis-server process's, from psutil.
An operator sizing a deployment multiplies by frames a second: replies x 1 / the frame
interval (``CHAT_FLUSH_*``), times the sockets per conversation.
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def layers(redis_url: str) -> dict:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    from conversations.layers import InMemoryChannelLayer

    return {
        "in-memory (conversations.layers)": lambda: InMemoryChannelLayer(capacity=1000),
        "Redis pub/sub (channels_redis)": lambda: RedisPubSubChannelLayer(
            hosts=[redis_url], prefix=f"bench-layers-{os.getpid()}"
        ),
    }


def redis_server() -> psutil.Process | None:
    for process in psutil.process_iter(["name"]):
        if process.info["name"] and process.info["name"].startswith("redis-server"):
            return process
    return None


def cpu_of(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


async def measure(make_layer, groups: int, rate: float, seconds: float, chars: int) -> dict:
    layer = make_layer()
    channels = [await layer.new_channel() for _ in range(groups)]
    for index, channel in enumerate(channels):
        await layer.group_add(f"conversation-{index}", channel)
    received = 0
    frame = {"type": "reply.delta", "message_id": 1, "start": 0, "end": chars, "html": "x" * chars}

    async def receive(channel: str) -> None:
        nonlocal received
        while True:
            await layer.receive(channel)
            received += 1

    receivers = [asyncio.create_task(receive(channel)) for channel in channels]
    await asyncio.sleep(0.5)  # subscriptions settle
    server = redis_server() if "Redis" in type(layer).__name__ else None
    loop, rounds = asyncio.get_running_loop(), int(seconds * rate)
    cpu, server_cpu, started = time.process_time(), cpu_of(server), loop.time()
    for round_ in range(rounds):
        for index in range(groups):
            await layer.group_send(f"conversation-{index}", frame)
        if (wait := started + (round_ + 1) / rate - loop.time()) > 0:
            await asyncio.sleep(wait)
    deadline = loop.time() + 10
    while received < rounds * groups and loop.time() < deadline:  # noqa: ASYNC110 (a poll)
        await asyncio.sleep(0.01)
    cpu, server_cpu = time.process_time() - cpu, cpu_of(server) - server_cpu
    wall = loop.time() - started
    for task in receivers:
        task.cancel()
    await asyncio.gather(*receivers, return_exceptions=True)
    for index, channel in enumerate(channels):
        await layer.group_discard(f"conversation-{index}", channel)
    if hasattr(layer, "flush"):
        await layer.flush()
    return {
        "frames": received,
        "sent": rounds * groups,
        "process_us": cpu / max(received, 1) * 1e6,
        "server_us": server_cpu / max(received, 1) * 1e6 if server else None,
        "process_cpu_percent": cpu / wall * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU per frame in each channel layer.")
    parser.add_argument("--groups", type=int, default=100, help="conversations, one socket each")
    parser.add_argument("--rate", type=float, default=20.0, help="frames a second per group")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--chars", type=int, default=300, help="characters of HTML a frame")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{args.groups} groups x {args.rate:g} frames/s x {args.seconds:g} s, "
        f"{args.chars} characters a frame"
    )
    print(f"{'layer':36} {'frames':>14} {'µs/frame here':>14} {'redis-server':>13} {'% core':>7}")
    for name, make in layers(args.redis).items():
        result = asyncio.run(measure(make, args.groups, args.rate, args.seconds, args.chars))
        server = "" if result["server_us"] is None else f"{result['server_us']:.1f}"
        frames = f"{result['frames']:,}/{result['sent']:,}"
        print(
            f"{name:36} {frames:>14} {result['process_us']:14.1f} {server:>13} "
            f"{result['process_cpu_percent']:7.0f}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
