"""Test settings: the project's own, with a Redis database of the tests' own and in-process tasks."""

import os
from urllib.parse import urlsplit, urlunsplit

# The project fails closed (DEBUG off: SECRET_KEY required, HTTPS redirects); tests run in development mode.
os.environ.setdefault("DEBUG", "true")

from llmbacker.settings import *  # noqa: E402, F403
from llmbacker.settings import BASE_DIR, DATABASES, REDIS_MAX_CONNECTIONS, REDIS_URL  # noqa: E402

# Redis database 13 belongs to the tests; the suite empties it before and after.
# TEST_REDIS_DB picks another, so two runs on one machine keep out of each other's way.
REDIS_TEST_DB = int(os.environ.get("TEST_REDIS_DB", "13"))
if REDIS_URL:
    REDIS_URL = urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{REDIS_TEST_DB}"))
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "max_connections": REDIS_MAX_CONNECTIONS}],
                "prefix": f"llmbacker-test-{REDIS_TEST_DB}",
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL

# Tasks run in process unless a test switches eager mode off for a real worker.
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_DEFAULT_QUEUE = f"llmbacker-test-{REDIS_TEST_DB}"

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so a daphne or Celery subprocess can open the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test-db-{REDIS_TEST_DB}.sqlite3")}

# Never the real Groq: tests that want the groq SDK point it at the fake server.
GROQ_API_KEY = ""
GROQ_BASE_URL = None
GROQ_MAX_RETRIES = 0

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
