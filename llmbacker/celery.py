"""The Celery app: `celery -A llmbacker worker` / `celery -A llmbacker beat`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmbacker.settings")

app = Celery("llmbacker")
# Every CELERY_* Django setting configures the app (broker, eager mode, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
