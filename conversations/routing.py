from django.urls import path

from .consumers import ConversationConsumer

websocket_urlpatterns = [
    # A conversation not stored yet: its first message stores it.
    path("ws/conversations/new/", ConversationConsumer.as_asgi()),
    path("ws/conversations/<int:conversation_id>/", ConversationConsumer.as_asgi()),
]
