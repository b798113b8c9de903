"""Reviewing in the admin, in headless Chromium against the live site."""

import pytest
from live import log_in

pytestmark = pytest.mark.browser

QUESTION = "Tell me about okapis, please"


def chat(page, site, text):
    """Start a conversation in the site, send ``text`` and wait for the whole reply."""
    log_in(page, site)
    page.get_by_role("button", name="New conversation").first.click()
    page.wait_for_url(f"{site.url}/c/*/")
    page.locator("#chat[data-socket=open]").wait_for()
    page.locator("textarea[name=content]").fill(text)
    page.locator("textarea[name=content]").press("Enter")
    page.locator("[data-role=assistant][data-status=complete]").wait_for(timeout=30_000)


def test_a_reviewer_finds_a_conversation_by_its_text_and_sees_its_usage(page, live_site):
    chat(page, live_site, QUESTION)
    ((prompt, completion, total),) = live_site.query(
        "SELECT prompt_tokens, completion_tokens, total_tokens FROM conversations_message "
        "WHERE role = 'assistant' AND conversation_id = ("
        "  SELECT conversation_id FROM conversations_message WHERE content = ?)",
        (QUESTION,),
    )
    assert total > 0
    refused = []  # what the Content-Security-Policy blocked, if anything
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Refused" in message.text else None,
    )

    page.goto("/admin/")
    page.locator("#content-main tr.model-conversation").get_by_role("link").first.click()
    page.locator("#searchbar").fill("okapis")
    page.locator("#searchbar").press("Enter")
    page.wait_for_url("**/admin/conversations/conversation/?q=okapis")
    rows = page.locator("#result_list tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1
    assert str(total) in rows.first.inner_text()
    rows.first.get_by_role("link", name=QUESTION).click()

    transcript = page.locator("#transcript")
    transcript.wait_for()
    assert QUESTION in transcript.inner_text()
    # Markdown or not, the reply's plain words are there.
    assert "a scripted server that streams a fixed reply" in transcript.inner_text()
    usage = transcript.locator(".role-assistant .usage").inner_text()
    assert (f"{prompt} prompt", f"{completion} completion", f"{total} total") == tuple(
        usage.splitlines()
    )
    assert f"{prompt} prompt + {completion} completion = {total}" in page.inner_text("#content")
    assert page.get_by_role("button", name="Save").count() == 0  # read-only

    page.get_by_role("link", name="Conversations").last.click()  # the breadcrumb
    page.get_by_role("link", name="Token usage").click()
    chart = page.locator("svg#token-chart")
    chart.wait_for()
    assert chart.is_visible()
    assert chart.locator("g.bars rect").count() >= 2  # today's prompt and completion
    per_user = page.locator("#usage-per-user")
    assert live_site.username in per_user.inner_text()
    assert refused == []
