"""Searching one's conversations by title and message text (FTS5 on SQLite, GIN on PostgreSQL)."""

import pytest

from conversations import search
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def said(conversation, content, role="user"):
    return Message.objects.create(conversation=conversation, role=role, content=content)


@pytest.fixture
def library(user, other_user):
    soup = Conversation.objects.create(owner=user, title="Soup recipes")
    said(soup, "How long should I simmer a leek and potato soup?")
    said(soup, "About **twenty** minutes, until the potatoes are soft.", role="assistant")
    trip = Conversation.objects.create(owner=user, title="Trip")
    said(trip, "Plan three days in Lisbon with trams and pastéis de nata <script>x</script>")
    secret = Conversation.objects.create(owner=other_user, title="Bob's potatoes")
    said(secret, "My secret potato stash")
    return {"soup": soup, "trip": trip, "secret": secret}


def titles(hits):
    return [hit.conversation.title for hit in hits]


def test_a_word_in_a_message_or_the_title_finds_the_conversation(user, library):
    assert titles(search.search(user, "Lisbon")) == ["Trip"]
    assert titles(search.search(user, "recipes")) == ["Soup recipes"]
    assert titles(search.search(user, "potatoes")) == ["Soup recipes"]  # not Bob's
    assert titles(search.search(user, "simmer soup")) == ["Soup recipes"]  # all words
    assert titles(search.search(user, "simmer lisbon")) == []


def test_the_last_word_may_be_the_start_of_one_and_case_does_not_matter(user, library):
    assert titles(search.search(user, "LISB")) == ["Trip"]
    assert titles(search.search(user, "tram")) == ["Trip"]


def test_a_snippet_shows_the_matching_words(user, library):
    (hit,) = search.search(user, "trams")
    assert "trams" in hit.snippet and len(hit.snippet) <= 122


def test_punctuation_and_query_syntax_are_only_text(user, library):
    assert search.search(user, '"') == [] and search.search(user, "***") == []
    assert titles(search.search(user, 'lisbon" OR "x')) == []  # both words must match
    assert titles(search.search(user, "NEAR(lisbon trams)")) == []


def test_text_written_later_is_found_and_deleted_text_is_not(user, library):
    reply = said(library["trip"], "", role="assistant")
    assert search.search(user, "funicular") == []
    Message.objects.filter(pk=reply.pk).update(content="Take the Gloria funicular too.")
    assert titles(search.search(user, "funicular")) == ["Trip"]
    library["trip"].delete()
    assert search.search(user, "funicular") == [] and search.search(user, "lisbon") == []


def test_the_sidebar_search_view(client, user, library):
    client.force_login(user)
    html = client.get("/search/", {"q": "pastéis", "current": library["trip"].pk}).text
    assert f'id="conversation-link-{library["trip"].pk}"' in html and 'aria-current="page"' in html
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "Nothing found for “zebra”" in client.get("/search/", {"q": "zebra"}).text
    recent = client.get("/search/", {"q": ""}).text
    assert "Soup recipes" in recent and "Trip" in recent and "Bob" not in recent
    page = client.get(library["soup"].get_absolute_url()).text
    assert 'input type="search" id="conversation-q" name="q"' in page


def test_renaming_sets_the_title_everywhere_and_for_good(client, user, other_user, library):
    soup = library["soup"]
    client.force_login(user)
    html = client.post(f"/c/{soup.pk}/rename/", {"title": "  Leek   soup "}).text
    assert '<h1 id="conversation-title" hx-swap-oob="true">Leek soup</h1>' in html
    assert f'id="conversation-link-{soup.pk}" hx-swap-oob="true"' in html
    soup.refresh_from_db()
    assert soup.title == "Leek soup"
    client.post(f"/c/{soup.pk}/rename/", {"title": "   "})  # an empty title changes nothing
    soup.refresh_from_db()
    assert soup.title == "Leek soup"
    client.force_login(other_user)
    assert client.post(f"/c/{soup.pk}/rename/", {"title": "Mine"}).status_code == 404


def test_pinned_conversations_come_first_in_the_list(client, user, library):
    client.force_login(user)
    soup, trip = library["soup"], library["trip"]
    Conversation.objects.filter(pk=soup.pk).update(updated_at=trip.updated_at.replace(year=2001))
    html = client.get("/").text
    assert html.index("Trip") < html.index("Soup recipes")
    response = client.post(f"/c/{soup.pk}/pin/", {"pinned": "1"})
    assert response.status_code == 302
    html = client.get("/").text
    assert html.index("Soup recipes") < html.index("Trip") and 'class="pinned"' in html
    assert "Unpin" in client.get(soup.get_absolute_url()).text
    client.post(f"/c/{soup.pk}/pin/", {"pinned": ""})
    soup.refresh_from_db()
    assert soup.pinned is False


def test_new_conversation_stores_nothing_until_its_first_message(client, user):
    client.force_login(user)
    assert client.post("/c/new/")["Location"] == "/c/new/"
    html = client.get("/c/new/").content.decode()
    assert 'ws-connect="/ws/conversations/new/"' in html and "New conversation" in html
    assert not Conversation.objects.filter(owner=user).exists()


def test_the_list_loads_more_as_it_is_scrolled(client, user):
    Conversation.objects.bulk_create(
        Conversation(owner=user, title=f"Conversation {n:03d}") for n in range(120)
    )
    client.force_login(user)
    html = client.get("/").text
    assert html.count('id="conversation-link-') == 50
    assert 'hx-trigger="revealed"' in html and "page=2" in html
    second = client.get("/search/", {"page": "2"}).text
    assert second.count('id="conversation-link-') == 50 and "page=3" in second
    assert "<ul" not in second  # rows to put in place of the "Loading more" row
    third = client.get("/search/", {"page": "3"}).text
    assert third.count('id="conversation-link-') == 20 and "revealed" not in third
    shown = [html, second, third]
    titles = {f"Conversation {n:03d}" for n in range(120)}
    assert all(any(title in page for page in shown) for title in titles)
    assert "No conversations yet" not in client.get("/search/", {"page": "9"}).text
