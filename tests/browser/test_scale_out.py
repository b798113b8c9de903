"""Two Daphne processes sharing PostgreSQL and Redis serve one conversation as one site.

Runs when DATABASE_URL points at PostgreSQL and REDIS_URL is set (bin/test's
scale-out pass, when PostgreSQL and Redis answer on this machine). The two
processes get a throwaway database of their own on the same server.
"""

import os
import time
import uuid

import pytest
from live import LONG_REPLY_TOKENS, LiveSite, shown_as
from scripted_upstream import numbered_words

SERVER_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (SERVER_URL.startswith("postgres") and REDIS_URL),
        reason="needs DATABASE_URL on PostgreSQL and REDIS_URL",
    ),
]

LONG_TEXT = "".join(numbered_words(LONG_REPLY_TOKENS)).strip()


@pytest.fixture
def shared_database():
    """A throwaway PostgreSQL database for the two processes."""
    import psycopg

    name = f"chatsite_scale_{uuid.uuid4().hex[:8]}"
    server = SERVER_URL.rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{server}/{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def two_processes(tmp_path, live_upstream, shared_database):
    env = {
        "DATABASE_URL": shared_database,
        "REDIS_URL": REDIS_URL,
        "CHANNEL_LAYER_PREFIX": f"chat-test-{uuid.uuid4().hex[:8]}",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = LiveSite(tmp_path / "a", live_upstream.base_url, **env).start()
    second = LiveSite(tmp_path / "b", live_upstream.base_url, **env)
    second.launch()  # same database: already migrated, same users
    yield first, second
    first.stop()
    second.stop()


def open_tab(context, url):
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(url)
    return page


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def stored_reply(site):
    (row,) = site.query(
        "SELECT content, status FROM conversations_message WHERE role = 'assistant'"
    )
    return row


def test_a_reply_started_on_one_process_is_watched_stopped_and_continued_on_another(
    browser, two_processes, live_upstream
):
    first, second = two_processes
    context = browser.new_context()
    on_a = open_tab(context, f"{first.url}/accounts/login/")
    on_a.fill("input[name=username]", first.username)
    on_a.fill("input[name=password]", first.password)
    on_a.click("button[type=submit]")
    on_a.get_by_role("button", name="New conversation").first.click()
    on_a.wait_for_url(f"{first.url}/c/*/")
    on_a.locator("#chat[data-socket=open]").wait_for()
    on_a.locator("textarea[name=content]").fill("long-reply please")
    on_a.locator("textarea[name=content]").press("Enter")
    on_a.locator("[data-role=assistant]").wait_for()
    exchange = live_upstream.server.exchanges[-1]

    # The same session cookie works on the other process: sessions live in PostgreSQL.
    on_b = open_tab(context, on_a.url.replace(first.url, second.url))
    on_b.wait_for_function(
        "() => { const m = document.querySelector('[data-role=assistant]');"
        " return m && m.dataset.status === 'streaming' && m.innerText.length > 100; }"
    )
    assert LONG_TEXT.startswith(on_b.locator("[data-role=assistant]").inner_text().strip())

    # Stop on B reaches the reply task in process A, which closes the upstream request.
    on_b.get_by_role("button", name="Stop").click()
    for page in (on_a, on_b):
        page.locator("[data-role=assistant][data-status=stopped]").wait_for(timeout=5_000)
    assert wait_until(exchange.disconnected.is_set, 1.0)
    stopped = on_b.locator("[data-role=assistant]").inner_text().strip()
    assert on_a.locator("[data-role=assistant]").inner_text().strip() == stopped
    assert LONG_TEXT.startswith(stopped)
    content, status = stored_reply(first)
    assert (content.strip(), status) == (stopped, "stopped")

    # Continue on B: a reply task in process B, watched live from A.
    on_b.get_by_role("button", name="Continue").click()
    for page in (on_a, on_b):
        page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=20_000)
    final = on_b.locator("[data-role=assistant]").inner_text()
    assert on_a.locator("[data-role=assistant]").inner_text() == final
    assert final.startswith(stopped) and len(final) > len(stopped)
    content, status = stored_reply(first)
    assert status == "complete"
    assert final == shown_as(on_b, content)
    context.close()
