"""The Celery app: `celery -A llmbacker worker` / `celery -A llmbacker beat`."""

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, celeryd_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmbacker.settings")

app = Celery("llmbacker")
# Every CELERY_* Django setting configures the app (broker, eager mode, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

BROKER_MISSING = (
    "No Celery broker: set REDIS_URL (or CELERY_BROKER_URL) in the environment or .env. "
    "Without one, tasks run inside the web process and no worker or beat is needed."
)


@celeryd_init.connect
@beat_init.connect
def broker_required(**kwargs: Any) -> None:
    """Stop a worker or beat that has no broker, instead of letting Celery fall back to amqp://localhost."""
    if not app.conf.broker_url:
        # SystemExit, because Celery logs and swallows any Exception a signal handler raises.
        raise SystemExit(BROKER_MISSING)
