"""A real site for the browser tests: Daphne in its own process, and helpers for pages."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conversations.rendering import render_markdown

ROOT = Path(__file__).resolve().parent.parent
LONG_REPLY_TOKENS = 600
REASONING_THOUGHTS, REASONING_WORDS = 90, 60  # the reasoning-slow scenario


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


def wait_for_page(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


class LiveSite:
    """Daphne serving chatsite.asgi on a temporary SQLite database, against a scripted upstream."""

    username = "reader"
    password = "a long test password"

    def __init__(self, tmp: Path, upstream_url: str, **env: str):
        self.tmp = tmp
        self.db_path = tmp / "site.sqlite3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "OPENAI_BASE_URL": upstream_url,
            "OPENAI_API_KEY": "",
            "CHAT_MODEL": "scripted-model",
            "DJANGO_DEBUG": "1",
            "REDIS_URL": "",
            "CHAT_MCP_CONFIG": "off",  # a test that wants tools names its servers
            "CHAT_GENERATE_TITLES": "0",  # nor titles
            "DJANGO_SUPERUSER_USERNAME": self.username,
            "DJANGO_SUPERUSER_PASSWORD": self.password,
            "DJANGO_SUPERUSER_EMAIL": "reader@example.com",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def manage_output(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def start(self) -> "LiveSite":
        self.manage("migrate", "--noinput")
        self.manage("createsuperuser", "--noinput")
        return self.launch()

    def launch(self) -> "LiveSite":
        """Start Daphne (again) on the same port and database."""
        self.log = open(self.tmp / "daphne.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatsite.serve",  # Daphne as bin/run starts it
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "chatsite.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        # The site's first request starts its runtime (the sweep of replies left streaming).
        wait_for_page(f"{self.url}/accounts/login/")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()

    def query(self, sql: str, params=()) -> list[tuple]:
        """Read the site's database directly (SQLite file, or PostgreSQL when configured)."""
        url = self.env["DATABASE_URL"]
        if url.startswith("postgres"):
            import psycopg

            with psycopg.connect(url) as db:
                return db.execute(sql, params).fetchall()
        with sqlite3.connect(self.db_path) as db:
            return db.execute(sql, params).fetchall()


def log_in(page, site: LiveSite) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", site.username)
    page.fill("input[name=password]", site.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")


def shown_as(page, markdown: str) -> str:
    """The visible text of ``markdown`` rendered by the site, laid out by this page's CSS."""
    return page.evaluate(
        """html => {
            const probe = document.createElement("div");
            probe.className = "message";
            probe.innerHTML = `<div class="message-text markdown">${html}</div>`;
            document.getElementById("messages").appendChild(probe);
            const text = probe.innerText;
            probe.remove();
            return text;
        }""",
        render_markdown(markdown),
    )
