from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The chat: WebSocket consumer, turns, the model client, tools, the page and API."""

    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Start exporting traces when an OTLP endpoint is set (every process: daphne, the worker)."""
        from .tracing import tracing_start

        tracing_start()
