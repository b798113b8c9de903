"""Daphne, on uvloop's event loop when uvloop is installed (unless CHAT_UVLOOP is 0).

    .venv/bin/python -m chatsite.serve -b 127.0.0.1 -p 8000 chatsite.asgi:application

Takes Daphne's own arguments. Daphne builds Twisted's asyncio reactor on
``asyncio.new_event_loop()`` when its server module is imported, so the event loop
policy set here, before that import, decides the loop every request runs on. uvloop
reads and writes sockets with less CPU than asyncio's own loop (bench/README.md); bin/run
starts the site through this module. ``daphne chatsite.asgi:application`` still works,
on asyncio's loop.
"""

import asyncio
import os
import sys


def use_uvloop() -> bool:
    """uvloop's policy, if uvloop is installed and CHAT_UVLOOP does not say 0."""
    if os.environ.get("CHAT_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main() -> None:
    loop = "uvloop" if use_uvloop() else "asyncio"
    print(f"chatsite.serve: the event loop is {loop}'s", file=sys.stderr, flush=True)
    from daphne.cli import CommandLineInterface

    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
