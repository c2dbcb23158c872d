"""`/healthz`: can this process serve chats? Database, channel layer, broker, model mode."""

import asyncio

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from llmbacker.celery import app as celery_app

from .llm import chat_model_get

CHECK_TIMEOUT_SECONDS = 3.0


def _database_check() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker_check() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)


def _channel_layer_check() -> None:
    """Ping the channel layer's Redis; the in-memory layer is always there.

    A PING, not a message sent and received through the layer: this view may
    run in an event loop of its own, and channels-redis refuses a receive
    from a second loop while the sockets' loop is receiving.
    """
    for host in settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", []):
        address = host["address"] if isinstance(host, dict) else host
        client = redis.Redis.from_url(
            address, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
        )
        try:
            client.ping()
        finally:
            client.close()


async def _outcome(check) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check()
    except Exception as exc:  # a health check reports every failure, whatever it is
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


async def healthz(request: HttpRequest) -> JsonResponse:
    """Report each dependency; 200 when all are usable, 503 otherwise."""
    model = chat_model_get()
    database = await _outcome(sync_to_async(_database_check))
    layer = await _outcome(sync_to_async(_channel_layer_check, thread_sensitive=False))
    if celery_app.conf.task_always_eager:
        broker = "in-process"
    else:
        broker = await _outcome(sync_to_async(_broker_check, thread_sensitive=False))
    healthy = database == "ok" and layer == "ok" and broker in ("ok", "in-process")
    body = {
        "status": "ok" if healthy else "unavailable",
        "database": database,
        "channel_layer": layer,
        "channel_layer_backend": settings.CHANNEL_LAYERS["default"]["BACKEND"].rsplit(".", 1)[-1],
        "broker": broker,
        "llm_mode": model.mode,
        "model": model.model,
    }
    if model.mode == "offline":
        body["notice"] = "Offline demo model: replies are canned. Set GROQ_API_KEY to use Groq."
    return JsonResponse(body, status=200 if healthy else 503)
