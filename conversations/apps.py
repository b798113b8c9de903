from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_delete, post_save

        from .endpoints import Endpoint
        from .runtime import runtime

        def changed(**kwargs):
            runtime.endpoints_changed()  # this process; others within CHAT_ENDPOINTS_TTL

        post_save.connect(changed, sender=Endpoint, weak=False)
        post_delete.connect(changed, sender=Endpoint, weak=False)
