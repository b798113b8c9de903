"""One user floods the site; another's page loads are timed. Then a socket that never reads.

    .venv/bin/python bench/abuse.py [--sockets 30] [--actions 4800] [--per-socket 40]

The site runs with its default limits. The attacker opens ``--sockets`` sockets to a
conversation of ``--history`` messages and sends ``--actions`` sync frames (1,000 ids
each), ``--per-socket`` a second on each, reading what comes back; meanwhile the victim
loads their conversation page again and again. Then one socket sends a sync every 0.2 s
for 20 s and never reads, and the site's RSS is sampled.
"""

import argparse
import asyncio
import json
import multiprocessing
import socket as socket_module
import statistics
import sys
import threading
import time

import psutil
import websockets
from common import (
    MB,
    Site,
    create_accounts,
    number,
    percentile,
    print_load,
    print_table,
    upstream_and_site,
    workspace,
)

HISTORY = """
from conversations.models import Conversation, Message
conversation = Conversation.objects.get(pk={pk})
Message.objects.bulk_create(
    Message(conversation=conversation, role=role, content="A line of history. " * 100)
    for role in ["user", "assistant"] * ({count} // 2)
)
conversation.messages.link_in_order()
"""
SYNC = json.dumps({"action": "sync", "since": 0, "shown": list(range(1, 1001))})


def timed_loads(account, path: str, stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        account.http.get(path).raise_for_status()
        out.append((time.monotonic(), time.perf_counter() - start))
        time.sleep(0.05)


async def flood(url: str, cookie: str, sockets: int, actions: int, rate: float) -> dict:
    """``actions`` syncs over ``sockets`` sockets, ``rate`` a second on each; the answers."""
    counts = {"refused sockets": 0, "frames read": 0, "slow-down notices": 0}

    async def one(frames: int) -> None:
        try:
            async with websockets.connect(
                url,
                origin=url.replace("ws://", "http://").split("/ws/")[0],
                additional_headers={"Cookie": cookie},
                max_size=None,
            ) as socket:

                async def read() -> None:
                    async for frame in socket:
                        counts["frames read"] += 1
                        counts["slow-down notices"] += "slow down" in frame

                reader = asyncio.ensure_future(read())
                for _ in range(frames):
                    await socket.send(SYNC)
                    await asyncio.sleep(1 / rate)
                await asyncio.sleep(1)  # what the site still sends
                reader.cancel()
        except websockets.ConnectionClosed:
            counts["refused sockets"] += 1

    await asyncio.gather(*(one(actions // sockets) for _ in range(sockets)))
    return counts


def flood_in_process(url: str, cookie: str, args) -> dict:
    return asyncio.run(flood(url, cookie, args.sockets, args.actions, args.per_socket))


def never_reading(site: Site, url: str, cookie: str, seconds: float = 20) -> tuple:
    """RSS (MiB) before, at the end of ``seconds`` of syncs never read, and 3 s after."""
    process = psutil.Process(site.pids[0])
    before = process.memory_info().rss / MB

    async def run() -> None:
        sock = socket_module.socket()  # a small receive buffer: the backlog stays on the site
        sock.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", site.port))
        async with websockets.connect(
            url,
            sock=sock,
            origin=url.replace("ws://", "http://").split("/ws/")[0],
            additional_headers={"Cookie": cookie},
            max_size=None,
            max_queue=1,
        ) as socket:
            socket.transport.pause_reading()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    await socket.send(SYNC)
                except websockets.ConnectionClosed:
                    break
                await asyncio.sleep(0.2)

    asyncio.run(run())
    during = process.memory_info().rss / MB
    time.sleep(3)
    return before, during, process.memory_info().rss / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=30)
    parser.add_argument("--actions", type=int, default=4800)
    parser.add_argument("--history", type=int, default=40)
    parser.add_argument("--per-socket", type=float, default=40, help="syncs a second")
    args = parser.parse_args()
    args.rate, args.tokens, args.paragraph = 100, 50, 0
    print_load("before")
    with workspace("abuse-") as (tmp, stack):
        _, env = upstream_and_site(tmp, stack, args)
        defaults = {"CHAT_SOCKETS_PER_USER": "20", "CHAT_MESSAGES_PER_MINUTE": "20"}
        site = Site(tmp, env | defaults).start()
        stack.callback(site.stop)
        attacker, victim = create_accounts(site, 2, "abuse")
        attack_path, victim_path = attacker.new_conversation(), victim.new_conversation()
        pk = attack_path.strip("/").split("/")[-1]
        site.manage("shell", "-c", HISTORY.format(pk=pk, count=args.history))
        page = "/c/" + victim_path.strip("/").split("/")[-1] + "/"
        ws_url = site.url.replace("http://", "ws://") + attack_path

        baseline: list = []
        stop = threading.Event()
        threading.Timer(3, stop.set).start()
        timed_loads(victim, page, stop, baseline)
        base = statistics.median(seconds for _, seconds in baseline)

        loads: list = []
        stop = threading.Event()
        loader = threading.Thread(target=timed_loads, args=(victim, page, stop, loads))
        loader.start()
        started = time.monotonic()
        with multiprocessing.Pool(1) as pool:  # not this process: its GIL times the loads
            counts = pool.apply(flood_in_process, (ws_url, attacker.cookie, args))
        ended = time.monotonic()
        time.sleep(5)
        stop.set()
        loader.join()

        during = [seconds for at, seconds in loads if started <= at <= ended]
        slow_after = [at - ended for at, seconds in loads if at > ended and seconds > 2 * base]
        rows = [
            ("victim page load, before (median)", number(base * 1000)),
            ("during the flood, median", number(statistics.median(during) * 1000)),
            ("during the flood, 95th percentile", number(percentile(during, 95, 1000))),
            ("during the flood, worst", number(max(during) * 1000)),
            ("worst / baseline median", number(max(during) / base)),
        ]
        print_table(
            f"{args.actions} syncs from {args.sockets} sockets of one user, "
            f"{ended - started:.1f} s",
            ("figure", "ms"),
            rows,
        )
        print(
            f"  loads during: {len(during)}; after the flood, the last load over twice the "
            f"baseline came {max(slow_after, default=0):.2f} s after it ended"
        )
        print("  site's answers:", ", ".join(f"{k} {v}" for k, v in counts.items()))

        before, peak, after = never_reading(site, ws_url, attacker.cookie)
        print(
            f"\nsocket that never reads, 20 s of syncs: RSS {before:.0f} MiB before, "
            f"{peak:.0f} at the end (+{peak - before:.0f}), {after:.0f} 3 s after it closed"
        )
        for account in (attacker, victim):
            account.close()
    print_load("after")


if __name__ == "__main__":
    sys.exit(main())
