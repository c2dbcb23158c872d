from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The chat: WebSocket consumer, turns, the model client, tools, the page and API."""

    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"
