"""Settings, read once from the environment (and `.env`) with django-environ.

With no environment at all this is the embedded default: SQLite, the
in-memory channel layer, Celery tasks run in process, the offline demo model.
Every variable is listed in the README's configuration table.
"""

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Off unless asked for: a server started with no environment fails closed
# (SECRET_KEY required, TLS settings on). `make run` and the tests set DEBUG=true.
DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false.")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- TLS: secure defaults unless DEBUG, so `check --deploy` is clean behind TLS ---
# HTTPS=false serves plain HTTP with DEBUG off (a trial with no TLS in front).
HTTPS = env.bool("HTTPS", default=not DEBUG)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS)
# Load balancers and container probes ask for /healthz, and Prometheus for /metrics, over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^metrics/?$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=HTTPS)
# Behind a TLS-terminating proxy that always sets it, name the header (e.g.
# X-Forwarded-Proto): requests (and socket handshakes) saying "https" in it are
# secure. Never set it when clients can reach daphne without the proxy.
_proxy_ssl_header = env.str("SECURE_PROXY_SSL_HEADER", default="")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "audit",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmbacker.urls"
ASGI_APPLICATION = "llmbacker.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Opening a PostgreSQL connection per database call cost ~23% of CPU under
# load. Persistent connections (CONN_MAX_AGE) do not fit ASGI: every HTTP
# request runs in a thread of its own, which kept its connection until it was
# collected, and page loads ran PostgreSQL out of connections. A pool per
# process (psycopg's, through Django) lends connections to whichever thread
# asks (the sockets' database thread keeps one: see chat/database.py); health
# checks hand out only live ones, so a database restart costs no failed request.
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env.int("DATABASE_POOL_SIZE", default=12),
        # A call waits this long for a connection before failing. Short: with
        # the database down, a handshake's user lookup waits this long, and
        # daphne gives a handshake 5 s.
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=2.0),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads write at once (sockets, the in-process task thread).
    # IMMEDIATE takes the write lock when a transaction begins, so a writer
    # waits (up to `timeout` s) instead of failing with "database is locked"
    # when its read would have to turn into a write.
    DATABASES["default"].setdefault("OPTIONS", {}).update(timeout=20, transaction_mode="IMMEDIATE")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves static files under daphne, also with DEBUG false; with
# finders on, no collectstatic step is needed for the page to work.
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "/admin/login/"

# --- Redis: channel layer and Celery broker --------------------------------
REDIS_URL = env.str("REDIS_URL", default="")

# Connections to Redis one process's channel layer may open at once; the limits
# have a pool of their own this size. At the size a command waits for a free
# connection (a plain pool raised MaxConnectionsError on a burst of closing
# sockets; a larger one opened hundreds of connections on a burst of handshakes,
# each a connect and a CLIENT SETINFO). Keep processes x 2 x this under Redis's
# maxclients (10,000 by default).
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", default=100)

CHANNEL_CAPACITY = 1000

# Allocations between two collections of Python's youngest generation in daphne
# (Python's default is 700; 0 keeps it). See llmbacker/collector.py.
GC_THRESHOLD = env.int("GC_THRESHOLD", default=10_000)

if REDIS_URL:
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            # channels-redis, with a receive that waits out a Redis restart.
            "BACKEND": "chat.layers.RedisChannelLayer",
            # Its connections have no socket timeout (see chat.layers.RedisChannelLayer.create_pool).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "max_connections": REDIS_MAX_CONNECTIONS}],
                # Messages waiting on one channel: a socket of another process
                # following a fast reply may fall a few hundred frames behind.
                "capacity": CHANNEL_CAPACITY,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": CHANNEL_CAPACITY}}
    }

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
# Without a broker, tasks run in process when they are queued.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
# Several deployments can share one broker, each on its own queue.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "sessions-sweep": {
        "task": "audit.tasks.sessions_sweep",
        "schedule": 60.0,
    },
    "report-daily": {
        "task": "audit.tasks.report_daily",
        "schedule": crontab(hour=0, minute=15),
    },
    "sessions-delete-expired": {
        "task": "audit.tasks.sessions_delete_expired",
        "schedule": crontab(hour=3, minute=30),
    },
}

# --- The model --------------------------------------------------------------
# Which chat model answers (chat/llm/): "groq", "openai" (any OpenAI-compatible
# server) or "offline"; unset: Groq when GROQ_API_KEY is set, else offline.
LLM_PROVIDERS = ("groq", "openai", "offline")
LLM_PROVIDER = env.str("LLM_PROVIDER", default="")
# A spare model on any provider, asked when the main one is rate limited or down
# (after its retries) before its reply began; its model defaults to that provider's.
LLM_FALLBACK_PROVIDER = env.str("LLM_FALLBACK_PROVIDER", default="")
LLM_FALLBACK_MODEL = env.str("LLM_FALLBACK_MODEL", default="")
for _name, _value in (("LLM_PROVIDER", LLM_PROVIDER), ("LLM_FALLBACK_PROVIDER", LLM_FALLBACK_PROVIDER)):
    if _value and _value not in LLM_PROVIDERS:
        raise ImproperlyConfigured(f"{_name} must be one of {', '.join(LLM_PROVIDERS)}, not {_value!r}")

OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_MODEL = env.str("OPENAI_MODEL", default="")
OPENAI_FAST_MODEL = env.str("OPENAI_FAST_MODEL", default="") or OPENAI_MODEL
if "openai" in (LLM_PROVIDER, LLM_FALLBACK_PROVIDER) and not (OPENAI_BASE_URL and OPENAI_MODEL):
    raise ImproperlyConfigured("the openai provider needs OPENAI_BASE_URL and OPENAI_MODEL")

GROQ_API_KEY = env.str("GROQ_API_KEY", default="")
if "groq" in (LLM_PROVIDER, LLM_FALLBACK_PROVIDER) and not GROQ_API_KEY:
    raise ImproperlyConfigured("the groq provider needs GROQ_API_KEY")
GROQ_BASE_URL = env.str("GROQ_BASE_URL", default="") or None
GROQ_MODEL = env.str("GROQ_MODEL", default="llama-3.3-70b-versatile")
GROQ_FAST_MODEL = env.str("GROQ_FAST_MODEL", default="llama-3.1-8b-instant")
GROQ_SUMMARY_MODEL = env.str("GROQ_SUMMARY_MODEL", default="") or GROQ_MODEL
# Models that take Groq's structured outputs (a JSON Schema in `response_format`);
# summaries by any other model are asked for in JSON mode.
GROQ_STRUCTURED_OUTPUT_MODELS = env.list(
    "GROQ_STRUCTURED_OUTPUT_MODELS",
    default=[
        "openai/gpt-oss-20b",
        "openai/gpt-oss-120b",
        "moonshotai/kimi-k2-instruct-0905",
        "meta-llama/llama-4-maverick-17b-128e-instruct",
        "meta-llama/llama-4-scout-17b-16e-instruct",
    ],
)
# A transcript longer than this is summarized in parts of this size, then combined.
# USD per million tokens, "input/output", by model: what a reply is charged
# (audit/costs.py). Defaults: Groq's list prices when written (check them);
# LLM_PRICES adds or overrides entries, e.g. "my-model=0.2/0.6". A model not
# listed is recorded with no cost.
LLM_PRICES_DEFAULT = {
    "llama-3.3-70b-versatile": "0.59/0.79",
    "llama-3.1-8b-instant": "0.05/0.08",
    "openai/gpt-oss-120b": "0.15/0.60",
    "openai/gpt-oss-20b": "0.075/0.30",
    "meta-llama/llama-4-maverick-17b-128e-instruct": "0.20/0.60",
    "meta-llama/llama-4-scout-17b-16e-instruct": "0.11/0.34",
    "moonshotai/kimi-k2-instruct-0905": "1.00/3.00",
    "offline-demo": "0/0",
}


def _price(model: str, price: str) -> tuple[Decimal, Decimal]:
    try:
        prompt, completion = (Decimal(part) for part in price.split("/"))
    except (ValueError, InvalidOperation):
        raise ImproperlyConfigured(f"LLM_PRICES: {model}={price!r} is not 'input/output' USD per million") from None
    if not (prompt.is_finite() and completion.is_finite()) or prompt < 0 or completion < 0:
        raise ImproperlyConfigured(f"LLM_PRICES: {model}={price!r} is not a price (finite, not negative)")
    return prompt, completion


LLM_PRICES = {
    model: _price(model, price) for model, price in {**LLM_PRICES_DEFAULT, **env.dict("LLM_PRICES", default={})}.items()
}

CHAT_SUMMARY_PART_CHARS = env.int("CHAT_SUMMARY_PART_CHARS", default=24_000)
GROQ_MAX_RETRIES = env.int("GROQ_MAX_RETRIES", default=1)
GROQ_TIMEOUT_SECONDS = env.float("GROQ_TIMEOUT_SECONDS", default=30.0)
GROQ_CONNECT_TIMEOUT_SECONDS = env.float("GROQ_CONNECT_TIMEOUT_SECONDS", default=5.0)
GROQ_MAX_CONNECTIONS = env.int("GROQ_MAX_CONNECTIONS", default=1000)
GROQ_FIRST_TOKEN_TIMEOUT_SECONDS = env.float("GROQ_FIRST_TOKEN_TIMEOUT_SECONDS", default=20.0)
GROQ_TOKEN_TIMEOUT_SECONDS = env.float("GROQ_TOKEN_TIMEOUT_SECONDS", default=15.0)

# --- The chat ---------------------------------------------------------------
CHAT_ALLOW_ANONYMOUS = env.bool("CHAT_ALLOW_ANONYMOUS", default=True)
CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", default=16_000)
CHAT_RATE_LIMIT_MESSAGES = env.int("CHAT_RATE_LIMIT_MESSAGES", default=20)
CHAT_RATE_LIMIT_WINDOW_SECONDS = env.float("CHAT_RATE_LIMIT_WINDOW_SECONDS", default=60.0)
# Per client address over the same window: higher, since many people can share one address.
CHAT_RATE_LIMIT_ADDRESS_MESSAGES = env.int("CHAT_RATE_LIMIT_ADDRESS_MESSAGES", default=120)
# Prompt plus completion tokens one visitor may use per UTC day; 0 disables (see chat/limits.py).
CHAT_TOKEN_BUDGET_PER_DAY = env.int("CHAT_TOKEN_BUDGET_PER_DAY", default=200_000)
CHAT_MAX_TOOL_ROUNDS = env.int("CHAT_MAX_TOOL_ROUNDS", default=5)
CHAT_TOOL_TIMEOUT_SECONDS = env.float("CHAT_TOOL_TIMEOUT_SECONDS", default=10.0)
CHAT_TOOL_RESULT_MAX_CHARS = env.int("CHAT_TOOL_RESULT_MAX_CHARS", default=4000)
# Names of the tools offered to the model; empty offers every registered tool.
CHAT_TOOLS = env.list("CHAT_TOOLS", default=[])
CHAT_SYSTEM_PROMPT = env.str(
    "CHAT_SYSTEM_PROMPT",
    default=(
        "You are LLM-Backer's assistant. Answer clearly and briefly. "
        "Use the tools when they help; never invent their results."
    ),
)
# Tokens of history a turn may send, per model ("model=tokens,..."); others get the default.
CHAT_CONTEXT_BUDGET_TOKENS = env.int("CHAT_CONTEXT_BUDGET_TOKENS", default=8000)
CHAT_CONTEXT_BUDGETS = {model: int(tokens) for model, tokens in env.dict("CHAT_CONTEXT_BUDGETS", default={}).items()}
# Sessions with no activity for this many days are deleted nightly (0 keeps everything).
CHAT_RETENTION_DAYS = env.int("CHAT_RETENTION_DAYS", default=0)
# Mask e-mail addresses, phone and card numbers in everything stored (and so sent to the model).
CHAT_REDACT_PII = env.bool("CHAT_REDACT_PII", default=False)
# A socket's lease on its session: renewed by its process every third of this;
# a session whose sockets all vanished is ended by the sweep about this long
# after, and a turn claimed by a vanished socket is free again after this.
CHAT_SOCKET_LEASE_SECONDS = env.float("CHAT_SOCKET_LEASE_SECONDS", default=30.0)
CHAT_MAX_SOCKETS_PER_VISITOR = env.int("CHAT_MAX_SOCKETS_PER_VISITOR", default=20)
CHAT_MAX_SOCKETS_PER_ADDRESS = env.int("CHAT_MAX_SOCKETS_PER_ADDRESS", default=200)
# How long a reply or a socket's leave keeps retrying while the database is away.
CHAT_DB_RETRY_SECONDS = env.float("CHAT_DB_RETRY_SECONDS", default=15.0)
# A reply goes on when its socket leaves (a reload, a dropped network), so the
# page can pick it up again; with no socket of the session connected for this
# long it is stopped (recorded as client_gone). 0: stop as soon as nobody is.
CHAT_UNATTENDED_REPLY_SECONDS = env.float("CHAT_UNATTENDED_REPLY_SECONDS", default=120.0)
# How long a finished turn's frames stay in its process for a socket resuming late.
CHAT_RESUME_GRACE_SECONDS = env.float("CHAT_RESUME_GRACE_SECONDS", default=60.0)
# A socket following a reply that runs in another process and hearing nothing from it for this
# long asks again: frames lost on the way are sent again, and a process that died is noticed.
CHAT_FOLLOW_SILENCE_SECONDS = env.float("CHAT_FOLLOW_SILENCE_SECONDS", default=20.0)

# --- Operations: /metrics (audit/metrics.py) --------------------------------
# Served when enabled and either a bearer token is set or DEBUG is on: in
# production without a token it is off (404). PROMETHEUS_MULTIPROC_DIR (read by
# prometheus-client itself) adds up several processes' figures.
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Traces (chat/tracing.py) are on when OTEL_EXPORTER_OTLP_ENDPOINT is set (read by
# OpenTelemetry itself); message text, tool arguments and results go on the spans
# only with this on.
TRACE_MESSAGE_CONTENT = env.bool("TRACE_MESSAGE_CONTENT", default=False)

# One handler, on the root logger: daphne's own logging setup then adds none
# (every line was printed twice), and Celery's worker replaces it with its own.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)-8s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "chat": {"level": env.str("LOG_LEVEL", default="INFO")},
        "audit": {"level": env.str("LOG_LEVEL", default="INFO")},
        # Where daphne listens, and its warnings.
        "daphne": {"level": "INFO"},
    },
}
