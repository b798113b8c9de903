from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from conversations.throttling import ThrottledAdminAuthenticationForm, ThrottledLoginView

# Failed logins are throttled on both login pages, counting against the same rows.
admin.site.login_form = ThrottledAdminAuthenticationForm


class IconRedirect(RedirectView):
    """The static URL is looked up per request: at import the manifest of hashed names may
    not exist yet (``manage.py migrate`` runs before ``collectstatic`` when deploying)."""

    permanent = True

    def get_redirect_url(self, *args, **kwargs):
        return static("chat/icon.svg")


urlpatterns = [
    path("admin/", admin.site.urls),
    # Pages without an icon link (the admin's) make browsers ask for this one.
    path("favicon.ico", IconRedirect.as_view()),
    # The throttled login view first; django.contrib.auth.urls serves the rest of accounts/.
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("conversations.urls")),
]
