from django.urls import path

from . import views

urlpatterns = [
    path("", views.conversation_list, name="conversation-list"),
    path("c/new/", views.conversation_create, name="conversation-create"),
    path("c/<int:pk>/", views.conversation_detail, name="conversation-detail"),
]
