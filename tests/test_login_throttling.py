"""Failed logins are throttled per account and per client address, on both login pages."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F, Q
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations.models import LoginFailure
from conversations.throttling import client_address

pytestmark = pytest.mark.django_db

LOGIN = reverse("login")
ADMIN_LOGIN = reverse("admin:login")
PASSWORD = "correct horse battery"  # alice's, in tests/conftest.py


@pytest.fixture(autouse=True)
def limits(settings):
    # The users here need no strong hashes; the default one costs a second per login.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CHAT_LOGIN_FAILURES = 5
    settings.CHAT_LOGIN_FAILURES_PER_ADDRESS = 20
    settings.CHAT_LOGIN_WINDOW = 900


def log_in(client, username, password, url=LOGIN, **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


def logged_in(client):
    return "_auth_user_id" in client.session


def age_failures(seconds):
    """Move time on: every stored failure happened this many seconds earlier."""
    LoginFailure.objects.update(created_at=F("created_at") - timedelta(seconds=seconds))


def test_thirty_wrong_passwords_then_the_right_one_is_refused(client, user):
    for _ in range(30):
        response = log_in(client, "alice", "wrong")
        assert response.status_code in (200, 429)
    response = log_in(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert int(response["Retry-After"]) == 900
    page = response.content.decode()
    assert "Too many failed logins for this account. Try again in 15 minutes." in page
    assert 'name="password"' in page  # the form page itself
    assert "didn't match" not in page
    assert not logged_in(client)
    # Refused attempts leave nothing behind: only the first five failures count.
    assert LoginFailure.objects.filter(scope="account", key="alice").count() == 5


def test_the_limit_is_reached_at_the_sixth_attempt(client, user):
    for _ in range(4):
        assert log_in(client, "alice", "wrong").status_code == 200
    assert log_in(client, "alice", "wrong").status_code == 200  # the fifth failure
    assert log_in(client, "alice", PASSWORD).status_code == 429


def test_the_message_says_when_to_try_again(client, user):
    for _ in range(5):
        log_in(client, "alice", "wrong")
    age_failures(180)
    response = log_in(client, "alice", PASSWORD)
    assert "Try again in 12 minutes." in response.content.decode()
    assert 715 <= int(response["Retry-After"]) <= 720


def test_usernames_are_counted_case_insensitively(client, user):
    for username in ["alice", "Alice", "ALICE", "aLiCe", "ALICE"]:
        log_in(client, username, "wrong")
    response = log_in(client, "alice", PASSWORD)
    assert "for this account" in response.content.decode()
    assert not logged_in(client)


def test_unknown_usernames_are_counted_like_known_ones(client):
    for _ in range(5):
        assert log_in(client, "nobody", "wrong").status_code == 200
    response = log_in(client, "nobody", "wrong")
    assert response.status_code == 429
    assert "for this account" in response.content.decode()


def test_per_address_limit_across_usernames(client, user):
    for n in range(20):
        assert log_in(client, f"user{n}", "wrong").status_code == 200
    response = log_in(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed logins from your address. Try again in 15 minutes." in (
        response.content.decode()
    )
    assert not logged_in(client)
    # Alice's account has no failures: from another address she logs in.
    response = log_in(client, "alice", PASSWORD, REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 302
    assert logged_in(client)


def test_the_window_passes(client, user, settings):
    for _ in range(5):
        log_in(client, "alice", "wrong")
    assert log_in(client, "alice", PASSWORD).status_code == 429
    age_failures(settings.CHAT_LOGIN_WINDOW - 60)
    response = log_in(client, "alice", PASSWORD)
    assert "Try again in 1 minute." in response.content.decode()
    age_failures(61)
    assert log_in(client, "alice", PASSWORD).status_code == 302
    assert logged_in(client)


def test_the_window_slides(client, user):
    for _ in range(3):
        log_in(client, "alice", "wrong")
    age_failures(600)
    for _ in range(2):
        log_in(client, "alice", "wrong")
    # The three older failures leave the window in five minutes, and then one attempt
    # gets through.
    response = log_in(client, "alice", PASSWORD)
    assert "Try again in 5 minutes." in response.content.decode()
    age_failures(301)
    assert log_in(client, "alice", "wrong").status_code == 200  # 3 failures in the window
    assert log_in(client, "alice", "wrong").status_code == 200  # 4
    assert log_in(client, "alice", "wrong").status_code == 200  # 5
    assert log_in(client, "alice", PASSWORD).status_code == 429


def test_failures_older_than_the_window_are_pruned(client, user, settings):
    for _ in range(3):
        log_in(client, "alice", "wrong")
    age_failures(settings.CHAT_LOGIN_WINDOW + 1)
    log_in(client, "bob", "wrong")
    assert set(LoginFailure.objects.values_list("key", flat=True)) == {"bob", "127.0.0.1"}


def test_success_resets_the_account(client, user):
    for _ in range(4):
        log_in(client, "alice", "wrong")
    assert log_in(client, "alice", PASSWORD).status_code == 302
    assert not LoginFailure.objects.filter(scope="account").exists()
    # The address's failures stay: a success clears the account only.
    assert LoginFailure.objects.filter(scope="address").count() == 4
    client.logout()
    for _ in range(4):
        assert log_in(client, "alice", "wrong").status_code == 200
    assert log_in(client, "alice", PASSWORD).status_code == 302
    assert logged_in(client)


def test_a_wrong_password_is_still_just_wrong(client, user):
    response = log_in(client, "alice", "wrong")
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert "Too many" not in response.content.decode()


def test_admin_login_is_throttled_too(client, django_user_model):
    django_user_model.objects.create_user("root", password=PASSWORD, is_staff=True)
    for _ in range(30):
        log_in(client, "root", "wrong", url=ADMIN_LOGIN)
    response = log_in(client, "root", PASSWORD, url=ADMIN_LOGIN)
    assert response.status_code == 200  # the admin's own login view
    page = response.content.decode()
    assert "Too many failed logins for this account. Try again in 15 minutes." in page
    assert 'name="password"' in page
    assert not logged_in(client)


def test_both_login_pages_count_together(client, django_user_model):
    django_user_model.objects.create_user("root", password=PASSWORD, is_staff=True)
    for url in [LOGIN, ADMIN_LOGIN, LOGIN, ADMIN_LOGIN, LOGIN]:
        log_in(client, "Root", "wrong", url=url)
    response = log_in(client, "root", PASSWORD, url=ADMIN_LOGIN)
    assert "Too many failed logins for this account." in response.content.decode()
    age_failures(901)
    response = log_in(client, "root", PASSWORD, url=ADMIN_LOGIN)
    assert response.status_code == 302
    assert logged_in(client)


def test_a_non_staff_user_with_the_right_password_is_not_a_failure(client, user):
    for _ in range(4):
        log_in(client, "alice", "wrong", url=ADMIN_LOGIN)
    response = log_in(client, "alice", PASSWORD, url=ADMIN_LOGIN)
    assert response.status_code == 200
    assert not logged_in(client)
    assert not LoginFailure.objects.filter(scope="account").exists()


def test_limits_come_from_settings(client, user, settings):
    settings.CHAT_LOGIN_FAILURES = 2
    settings.CHAT_LOGIN_WINDOW = 60
    log_in(client, "alice", "wrong")
    log_in(client, "alice", "wrong")
    response = log_in(client, "alice", PASSWORD)
    assert "Try again in 1 minute." in response.content.decode()
    settings.CHAT_LOGIN_FAILURES = 0  # off
    assert log_in(client, "alice", PASSWORD).status_code == 302


def test_checking_costs_one_query(client, user):
    log_in(client, "alice", "wrong")
    with CaptureQueriesContext(connection) as queries:
        log_in(client, "alice", "wrong")
    throttling = [q["sql"] for q in queries if "conversations_loginfailure" in q["sql"]]
    # Store the attempt's two rows, count both scopes, prune old rows.
    assert len(throttling) == 3
    assert throttling[0].startswith("INSERT")
    assert throttling[1].startswith("SELECT") and "COUNT" in throttling[1]
    assert throttling[2].startswith("DELETE")
    if connection.vendor == "sqlite":  # PostgreSQL may scan a table this small
        since = timezone.now() - timedelta(seconds=900)
        plan = LoginFailure.objects.filter(
            Q(scope="account", key="alice") | Q(scope="address", key="127.0.0.1"),
            created_at__gt=since,
        ).explain()
        assert "login_failure_lookup" in plan
        assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", "")


@pytest.mark.parametrize(
    ("meta", "behind_proxy", "address"),
    [
        ({"REMOTE_ADDR": "192.0.2.1"}, False, "192.0.2.1"),
        ({"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}, False, "192.0.2.1"),
        (
            {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.4"},
            True,
            "198.51.100.4",
        ),
        ({"REMOTE_ADDR": "10.0.0.1"}, True, "10.0.0.1"),
        ({"REMOTE_ADDR": "2001:db8:1:2:3:4:5:6"}, False, "2001:db8:1:2::/64"),
        ({"REMOTE_ADDR": "::ffff:192.0.2.9"}, False, "192.0.2.9"),
    ],
)
def test_client_address(settings, meta, behind_proxy, address):
    if behind_proxy:
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    request = RequestFactory().get("/", **meta)
    request.META.update(meta)
    assert client_address(request) == address


def test_behind_a_proxy_the_last_forwarded_hop_is_counted(client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    for n in range(20):
        # The client makes up the first entry each time; the proxy appends the real one.
        log_in(client, f"user{n}", "wrong", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}, 198.51.100.4")
    response = log_in(client, "x", "wrong", HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert "from your address" in response.content.decode()
    response = log_in(client, "x", "wrong", HTTP_X_FORWARDED_FOR="198.51.100.5")
    assert response.status_code == 200
