from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit trail: sessions, their events, summaries."""

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"
