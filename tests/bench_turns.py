"""Benchmark: chat turns through the real ASGI app, database and channel layer (`make bench`).

The fake Groq server answers at once, so the figures are the backend's own
cost per turn: recording, relaying tokens, the round trip of the socket.
Runs on a throw-away test database of whatever DATABASE_URL / REDIS_URL name.

    make bench BENCH_ARGS="--sessions 20 --turns 5 --words 80"
"""

import argparse
import asyncio
import os
import statistics
import time
import uuid

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.db import connection  # noqa: E402

from audit.models import Event  # noqa: E402
from llmbacker.asgi import application  # noqa: E402

from .fake_groq import FakeGroq, text_reply  # noqa: E402


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


async def one_session(turns: int, first_token: list[float], whole: list[float]) -> None:
    store = SessionStore()
    await sync_to_async(store.create)()
    headers = [(b"origin", b"http://localhost"), (b"cookie", f"sessionid={store.session_key}".encode())]
    comm = WebsocketCommunicator(application, f"/ws/session/{uuid.uuid4()}/", headers=headers)
    await comm.connect()
    await comm.receive_json_from()
    for n in range(turns):
        started = time.perf_counter()
        await comm.send_json_to({"type": "message", "content": f"turn {n}"})
        seen_token = False
        while True:
            frame = await comm.receive_json_from(timeout=30)
            if frame["type"] == "token" and not seen_token:
                seen_token = True
                first_token.append((time.perf_counter() - started) * 1000)
            if frame["type"] == "done":
                whole.append((time.perf_counter() - started) * 1000)
                break
    await comm.disconnect()


async def run(sessions: int, turns: int) -> tuple[list[float], list[float], float]:
    first_token: list[float] = []
    whole: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(one_session(turns, first_token, whole) for _ in range(sessions)))
    return first_token, whole, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions")
    parser.add_argument("--turns", type=int, default=5, help="turns per session")
    parser.add_argument("--words", type=int, default=60, help="words (token frames) per reply")
    options = parser.parse_args()

    fake = FakeGroq().start()
    settings.GROQ_API_KEY, settings.GROQ_BASE_URL = "bench-key", fake.url
    # The rate limit is not what is measured.
    settings.CHAT_RATE_LIMIT_MESSAGES = 0
    reply = " ".join(f"w{n}" for n in range(options.words))
    fake.enqueue(*[text_reply(reply)] * (options.sessions * options.turns))
    # A database of its own, so a test run going on at the same time is not disturbed.
    test_settings = connection.settings_dict.setdefault("TEST", {})
    if connection.vendor == "sqlite":
        test_settings["NAME"] = str(settings.BASE_DIR / "bench-db.sqlite3")
    else:
        test_settings["NAME"] = f"bench_{connection.settings_dict['NAME']}"
    database = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        first_token, whole, elapsed = asyncio.run(run(options.sessions, options.turns))
        events = Event.objects.count()
    finally:
        connection.creation.destroy_test_db(database, verbosity=0)
        fake.stop()

    count = len(whole)
    print(
        f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
        f"channel layer {settings.CHANNEL_LAYERS['default']['BACKEND'].rsplit('.', 1)[-1]}"
    )
    print(f"{options.sessions} sessions x {options.turns} turns x {options.words} tokens, model delay 0")
    print(
        f"{count} turns in {elapsed:.2f} s: {count / elapsed:.1f} turns/s, "
        f"{count * options.words / elapsed:.0f} token frames/s, {events} events recorded"
    )
    for name, values in (("first token ms", first_token), ("whole turn ms", whole)):
        print(
            f"{name:>15}: p50 {statistics.median(values):7.1f}  p95 {percentile(values, 0.95):7.1f}  "
            f"p99 {percentile(values, 0.99):7.1f}  max {max(values):7.1f}"
        )


if __name__ == "__main__":
    main()
