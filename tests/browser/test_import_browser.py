"""Importing a ChatGPT export in Chromium, at desktop and phone widths: the upload, its
progress to the end, and an imported conversation with its versions. A malformed file
says so and stores nothing. Screenshots go to tests/screenshots/ (ignored by git)."""

import json

import pytest
from test_imports import chatgpt_conversation
from test_settings_browser import SCREENSHOTS, WIDTHS, logged_in

pytestmark = pytest.mark.browser


def import_file(page, name: str, content: bytes):
    page.goto("/")
    page.locator("main").get_by_role("link", name="import", exact=True).click()
    page.locator("input[name=file]").set_input_files(
        files=[{"name": name, "mimeType": "application/json", "buffer": content}]
    )
    page.get_by_role("button", name="Import").click()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_an_uploaded_export_is_imported_with_its_versions(browser, live_site, width):
    count = "SELECT count(*) FROM conversations_conversation"
    with logged_in(browser, live_site, width) as page:
        [(before,)] = live_site.query(count)
        documents = [chatgpt_conversation(title=f"Leeks at {width}"), chatgpt_conversation()]
        import_file(page, "conversations.json", json.dumps(documents).encode())
        progress = page.locator("#import-progress[data-status=done]")
        progress.wait_for()
        assert "Imported 2 conversations." in progress.inner_text()
        assert live_site.query(count) == [(before + 2,)]
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"import-{width}.png", full_page=True)

        progress.get_by_role("link", name=f"Leeks at {width}").click()
        page.locator("#chat[data-socket=open]").wait_for()
        texts = [t.strip() for t in page.locator("#messages .message").all_inner_texts()]
        assert texts == [
            "What is a leek, really?",
            "Allium porrum, a vegetable.",
            "[image]\nIs this one?",
            "Yes, that is a leek.",
        ]
        first = page.locator(".turn-user").first
        assert first.locator(".version-label").inner_text() == "2 / 2"
        first.get_by_role("button", name="Previous version").click()
        first = page.locator(".turn-user").first
        first.locator(".version-label").filter(has_text="1 / 2").wait_for()
        # Under the first message, the regenerated reply, the later of its two versions.
        reply = page.locator(".turn-assistant").first
        assert reply.locator(".version-label").inner_text() == "2 / 2"
        assert reply.locator(".message").inner_text().strip() == "A vegetable of the allium family."
        page.screenshot(path=SCREENSHOTS / f"import-versions-{width}.png", full_page=True)
        for label in page.locator(".version-label").all():
            box = label.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTHS[width]["width"]


def test_a_malformed_file_is_refused_and_stores_nothing(browser, live_site):
    count = "SELECT count(*) FROM conversations_conversation"
    with logged_in(browser, live_site, "desktop") as page:
        [(before,)] = live_site.query(count)
        looped = chatgpt_conversation()
        looped["mapping"]["u1"]["parent"] = "a1"
        import_file(page, "looped.json", json.dumps([chatgpt_conversation(), looped]).encode())
        alert = page.locator("#import-progress[data-status=failed] [role=alert]")
        alert.wait_for()
        assert "loop" in alert.inner_text() and "Nothing was imported." in alert.inner_text()
        assert live_site.query(count) == [(before,)]
