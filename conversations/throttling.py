"""Login throttling: failed logins per account and per client address, in the database.

Each attempt at a password first stores a row for its account (the username, case-folded,
whether or not such a user exists) and one for its address, then counts the rows of both
within ``CHAT_LOGIN_WINDOW`` in one indexed query. Past ``CHAT_LOGIN_FAILURES`` for the
account or ``CHAT_LOGIN_FAILURES_PER_ADDRESS`` for the address, the attempt deletes its
rows and is refused without the password being checked, so even the right one is refused.
Otherwise the password is checked: a failure keeps the rows, a success deletes the
account's rows (clearing its failures) and its own address row.

Storing before counting bounds concurrent guessing too: attempts racing each other each
see at least the rows committed before theirs, so no more than the limit get through. A
refused attempt leaves nothing behind, so hammering a locked account does not lengthen
its lockout: it ends once enough failures are older than the window (a sliding window).

The forms here go to the site's login view (chatsite/urls.py) and to the admin's
(``admin.site.login_form``); both count against the same rows.
"""

import ipaddress
import math
import operator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.db import connections, router
from django.db.models import Count, Q
from django.utils import timezone

from .models import LoginFailure

Scope = LoginFailure.Scope
KEY_LENGTH = LoginFailure._meta.get_field("key").max_length


def account_key(username: str) -> str:
    return username.casefold()[:KEY_LENGTH]


def client_address(request) -> str:
    """The client's address, or "" when unknown.

    REMOTE_ADDR, unless the site sits behind a proxy (DJANGO_SECURE_PROXY_SSL_HEADER=1,
    i.e. Django trusts the proxy's X-Forwarded-Proto): then REMOTE_ADDR is the proxy's,
    and the client's is the last hop of X-Forwarded-For, the one our proxy appended.
    Earlier entries come from the client and could be anything.
    """
    if request is None:
        return ""
    address = request.META.get("REMOTE_ADDR", "")
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded.strip():
            address = forwarded.split(",")[-1]
    return address_key(address)


def address_key(address: str) -> str:
    """The key of an address: an IPv4 address itself, an IPv6 address's /64 (one host
    usually holds a whole /64), an unparsable address as it is."""
    address = address.strip()
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:KEY_LENGTH]
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def window() -> timedelta:
    return timedelta(seconds=settings.CHAT_LOGIN_WINDOW)


def in_words(wait: timedelta) -> str:
    minutes = max(1, math.ceil(wait.total_seconds() / 60))
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


@dataclass
class Refusal:
    message: str
    retry_after: timedelta


@dataclass
class Attempt:
    """One attempt at a password, its rows stored (see the module's docstring)."""

    account: str
    address: str
    rows: list[LoginFailure] = field(default_factory=list)
    refusal: Refusal | None = None

    @classmethod
    def begin(cls, username: str, request) -> "Attempt":
        attempt = cls(account_key(username), client_address(request))
        limits = {
            scope: (key, limit)
            for scope, key, limit in [
                (Scope.ACCOUNT, attempt.account, settings.CHAT_LOGIN_FAILURES),
                (Scope.ADDRESS, attempt.address, settings.CHAT_LOGIN_FAILURES_PER_ADDRESS),
            ]
            if key and limit > 0
        }
        if not limits:
            return attempt
        now = timezone.now()
        rows = [
            LoginFailure(scope=scope, key=key, created_at=now) for scope, (key, _) in limits.items()
        ]
        if connections[router.db_for_write(LoginFailure)].features.can_return_rows_from_bulk_insert:
            LoginFailure.objects.bulk_create(rows)
        else:  # MySQL: bulk_create sets no primary keys
            for row in rows:
                row.save()
        attempt.rows = rows
        since = now - window()
        # The check: one query, two ranges of the (scope, key, created_at) index.
        counts = LoginFailure.objects.filter(
            reduce(operator.or_, (Q(scope=scope, key=key) for scope, (key, _) in limits.items())),
            created_at__gt=since,
        ).aggregate(**{scope.value: Count("pk", filter=Q(scope=scope)) for scope in limits})
        # Each count includes this attempt's row: past the limit, at least `limit` earlier
        # failures are in the window.
        waits = {
            scope: attempt._wait(scope, key, limit, counts[scope.value] - 1, since, now)
            for scope, (key, limit) in limits.items()
            if counts[scope.value] > limit
        }
        if waits:
            attempt._delete_rows()
            # Both limits must clear: the later one is the one to tell (the account's on a tie).
            scope = max(waits, key=lambda s: (waits[s], s == Scope.ACCOUNT))
            whose = "for this account" if scope == Scope.ACCOUNT else "from your address"
            attempt.refusal = Refusal(
                f"Too many failed logins {whose}. Try again in {in_words(waits[scope])}.",
                waits[scope],
            )
        return attempt

    def _wait(self, scope, key, limit, failures: int, since: datetime, now) -> timedelta:
        """How long until enough failures of the scope leave the window for one attempt."""
        # The next attempt gets through when at most limit - 1 failures are in the
        # window: once the oldest failures - limit + 1 of them have left it.
        oldest_to_leave = (
            LoginFailure.objects.filter(scope=scope, key=key, created_at__gt=since)
            .exclude(pk__in=[row.pk for row in self.rows])
            .order_by("created_at", "pk")
            .values_list("created_at", flat=True)[failures - limit : failures - limit + 1]
        )
        for created_at in oldest_to_leave:
            return max(created_at + window() - now, timedelta(0))
        return timedelta(0)  # failures left meanwhile (a success, or pruned)

    def _delete_rows(self):
        if self.rows:
            LoginFailure.objects.filter(pk__in=[row.pk for row in self.rows]).delete()
        self.rows = []

    def succeeded(self):
        """The password was right: the account's failures go, and this attempt's rows."""
        if self.account:
            LoginFailure.objects.filter(
                Q(scope=Scope.ACCOUNT, key=self.account) | Q(pk__in=[row.pk for row in self.rows])
            ).delete()
        self.rows = []

    def failed(self):
        """The password was wrong: this attempt's rows stay as its failures."""
        if self.rows:
            LoginFailure.objects.filter(created_at__lte=timezone.now() - window()).delete()


class ThrottledAuthenticationFormMixin:
    """Refuses a login past the limits before the password is checked; records failures."""

    refusal: Refusal | None = None

    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()  # no password is checked: nothing to count
        attempt = Attempt.begin(username, self.request)
        if attempt.refusal is not None:
            self.refusal = attempt.refusal
            raise forms.ValidationError(attempt.refusal.message, code="throttled")
        try:
            return super().clean()
        finally:
            # user_cache is set once the password is right, even if the account may not
            # log in here (not staff, in the admin). An inactive account's right password
            # is a failure: ModelBackend does not authenticate it.
            if self.user_cache is not None:
                attempt.succeeded()
            else:
                attempt.failed()


class ThrottledAuthenticationForm(ThrottledAuthenticationFormMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledAuthenticationFormMixin, AdminAuthenticationForm):
    pass


class ThrottledLoginView(LoginView):
    """The site's login view; a refused login renders the form with HTTP 429."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.refusal is not None:
            response.status_code = 429
            response["Retry-After"] = str(
                max(1, math.ceil(form.refusal.retry_after.total_seconds()))
            )
        return response
