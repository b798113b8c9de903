from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # Pages without an icon link (the admin's) make browsers ask for this one.
    path("favicon.ico", RedirectView.as_view(url=static("chat/icon.svg"), permanent=True)),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("conversations.urls")),
]
