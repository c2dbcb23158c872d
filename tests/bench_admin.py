"""Benchmark: the admin with 100,000 sessions and 1,000,000 events on PostgreSQL (`make bench-admin`).

Loads the data with set-based SQL into a throw-away database, then times the
pages staff use: the session list, a full-text search, a filter, a long
session's timeline, and a report over all of it.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmbacker make bench-admin
"""

import argparse
import os
import statistics
import time
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from audit.reports import report_figures  # noqa: E402

WORDS = "lisbon trains hotel invoice refund password weather flight pizza budget python deploy".split()


def load(sessions: int, events_per_session: int) -> str:
    """Insert the sessions and events with generate_series; return one session id."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO audit_chatsession (id, anon_key, status, model, llm_mode, title, started_at,
                last_activity_at, ended_at, duration_seconds, next_seq, turn_count,
                message_count, tool_call_count, error_count, prompt_tokens, completion_tokens,
                context_summary, context_summary_seq)
            SELECT md5(n::text)::uuid, 'visitor' || (n %% 5000),
                CASE WHEN n %% 10 = 0 THEN 'active' ELSE 'ended' END,
                CASE WHEN n %% 3 = 0 THEN 'fast' ELSE 'big' END, 'groq', 'session ' || n,
                now() - make_interval(mins => n), now() - make_interval(mins => n),
                now() - make_interval(mins => n) + interval '5 minutes', 300, %(events)s + 1,
                %(events)s / 2, %(events)s, n %% 3, (n %% 7) / 6, (100 * n) %% 1000, 50, '', 0
            FROM generate_series(1, %(sessions)s) AS n
            """,
            {"events": events_per_session, "sessions": sessions},
        )
        cursor.execute(
            """
            INSERT INTO audit_event (session_id, seq, type, content, data, created_at)
            SELECT md5(s::text)::uuid, e,
                CASE WHEN e %% 2 = 1 THEN 'user_message' ELSE 'assistant_message' END,
                'message ' || e || ' about ' || (%(words)s::text[])[1 + (s * e) %% %(count)s],
                '{}'::jsonb, now() - make_interval(mins => s)
            FROM generate_series(1, %(sessions)s) AS s, generate_series(1, %(events)s) AS e
            """,
            {"words": WORDS, "count": len(WORDS), "sessions": sessions, "events": events_per_session},
        )
        cursor.execute("ANALYZE audit_chatsession")
        cursor.execute("ANALYZE audit_event")
        cursor.execute("SELECT md5('1')::uuid")
        return str(cursor.fetchone()[0])


def timed(name: str, call, repeat: int = 5) -> None:
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1000)
    print(f"{name:>42}: median {statistics.median(durations):7.1f} ms   max {max(durations):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--events-per-session", type=int, default=10)
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench_admin measures PostgreSQL: set DATABASE_URL to a postgres:// URL")
    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"bench_admin_{connection.settings_dict['NAME']}"
    database = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        settings.ALLOWED_HOSTS = ["testserver"]
        started = time.perf_counter()
        one = load(options.sessions, options.events_per_session)
        print(
            f"loaded {options.sessions} sessions and {options.sessions * options.events_per_session} events "
            f"in {time.perf_counter() - started:.1f} s"
        )
        client = Client()
        client.force_login(get_user_model().objects.create_superuser("bench", password="x"))

        def page(url: str, **query):
            def get():
                response = client.get(url, query)
                assert response.status_code == 200, response.status_code

            return get

        timed("session list, first page", page("/admin/audit/chatsession/"))
        middle = max(1, options.sessions // 100 // 2)  # the admin lists 100 a page
        timed(f"session list, page {middle}", page("/admin/audit/chatsession/", p=middle))
        timed("full-text search 'refund'", page("/admin/audit/chatsession/", q="refund"))
        timed("filter had errors + model", page("/admin/audit/chatsession/", had_errors="yes", model__exact="fast"))
        timed("session page (timeline)", page(f"/admin/audit/chatsession/{one}/change/"))
        now = timezone.now()
        timed(
            "report over the last 30 days",
            lambda: report_figures(start=now - timedelta(days=30), end=now),
            repeat=2,
        )
    finally:
        connection.creation.destroy_test_db(database, verbosity=0)


if __name__ == "__main__":
    main()
