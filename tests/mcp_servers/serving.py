"""Serving the test MCP server over streamable HTTP, from a thread of the test process."""

import socket
import threading
import time

import uvicorn


class HttpServer:
    """An ASGI app on a fixed loopback port, served by uvicorn in a thread; restartable."""

    def __init__(self, make_app) -> None:
        self.make_app = make_app
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        config = uvicorn.Config(self.make_app(), log_level="warning", timeout_graceful_shutdown=0.2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [listener]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started:
            assert time.monotonic() < deadline, "the test MCP server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = self.server.force_exit = True
            self.thread.join(5)
            self.server = None
