"""Daphne, on uvloop's event loop when CHAT_UVLOOP is 1 and uvloop is installed.

    .venv/bin/python -m chatsite.serve -b 127.0.0.1 -p 8000 chatsite.asgi:application

Takes Daphne's own arguments. Daphne builds Twisted's asyncio reactor on
``asyncio.new_event_loop()`` when its server module is imported, so the event loop
policy set here, before that import, decides the loop every request runs on. bin/run
starts the site through this module; ``daphne chatsite.asgi:application`` is the same
site on asyncio's loop. uvloop is off by default: under the site it saved little CPU and
made token latency worse at 100 and 200 streams (bench/README.md).
"""

import asyncio
import os
import sys


def use_uvloop() -> bool:
    """uvloop's policy, if CHAT_UVLOOP asks for it and uvloop is installed."""
    if os.environ.get("CHAT_UVLOOP", "0") != "1":
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
