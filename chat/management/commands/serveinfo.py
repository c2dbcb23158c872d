"""`manage.py serveinfo`: say what this configuration runs on, and where to open it."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from chat.llm import chat_model_get


class Command(BaseCommand):
    help = "Print the database, channel layer, task mode and model in use, and the URLs to open."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the address the server listens on")

    def handle(self, *args, url: str, **options) -> None:
        model = chat_model_get()
        database = settings.DATABASES["default"]
        layer = settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1]
        tasks = "in process (no broker)" if settings.CELERY_TASK_ALWAYS_EAGER else "Celery via the broker"
        if model.mode == "offline":
            llm = "OFFLINE DEMO MODEL (canned replies; set GROQ_API_KEY to use Groq)"
        else:
            llm = f"Groq, model {model.model}"
        has_admin = get_user_model().objects.filter(is_superuser=True).exists()
        lines = [
            "",
            "LLM-Backer",
            f"  database : {database['ENGINE'].rsplit('.', 1)[-1]} {database['NAME']}",
            f"  channels : {layer}",
            f"  tasks    : {tasks}",
            f"  model    : {llm}",
            "",
            f"  chat     : {url}/",
            f"  admin    : {url}/admin/",
        ]
        if not has_admin:
            lines.append("  no admin user yet: run `make superuser` in another terminal to create one")
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            lines.append("  start a worker for summaries: .venv/bin/celery -A llmbacker worker")
        self.stdout.write("\n".join(lines) + "\n")
