from django.urls import path

from . import views

urlpatterns = [
    path("", views.conversation_list, name="conversation-list"),
    path("search/", views.conversation_search, name="conversation-search"),
    path("c/new/", views.conversation_new, name="conversation-new"),
    path("c/new/settings/", views.conversation_settings, name="conversation-new-settings"),
    path("c/<int:pk>/", views.conversation_detail, name="conversation-detail"),
    path("c/<int:pk>/pin/", views.conversation_pin, name="conversation-pin"),
    path("c/<int:pk>/rename/", views.conversation_rename, name="conversation-rename"),
    path("c/<int:pk>/settings/", views.conversation_settings, name="conversation-settings"),
    path("c/<int:pk>/tools/", views.conversation_tools, name="conversation-tools"),
    path("c/<int:pk>/delete/", views.conversation_delete, name="conversation-delete"),
    path("c/<int:pk>/export.json", views.conversation_export, name="conversation-export"),
    path("import/", views.conversation_import, name="conversation-import"),
    path(
        "import/<int:pk>/", views.conversation_import_progress, name="conversation-import-progress"
    ),
    path("accounts/signup/", views.signup, name="signup"),
]
