"""Celery tasks of the audit trail. Each takes ids, re-fetches, and calls one service."""

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from uuid import UUID

from celery import shared_task
from django.conf import settings
from django.db import connections
from django.utils import timezone

from chat.llm import LLMError

from . import metrics, services
from .models import ReportKind
from .reports import report_build
from .summaries import SummaryInvalid, summary_generate

logger = logging.getLogger(__name__)

SUMMARY_MAX_RETRIES = 5


@shared_task(bind=True, acks_late=True, max_retries=SUMMARY_MAX_RETRIES)
def session_summarize(self, session_id: str) -> bool:
    """Write the session's summary; retry with backoff when the model fails, then mark it failed."""
    try:
        stored = summary_generate(session_id=UUID(session_id))
    except (LLMError, SummaryInvalid) as exc:
        if self.request.retries >= self.max_retries:
            logger.warning("summary of session %s failed for good: %s", session_id, exc)
            services.summary_mark_failed(session_id=UUID(session_id), error=str(exc))
            metrics.summary_task_ended("failed")
            return False
        metrics.summary_task_ended("retried")
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc
    except Exception:
        # The database or a bug: Celery logs it; the sweep queues the summary again.
        metrics.summary_task_ended("error")
        raise
    metrics.summary_task_ended("written" if stored else "skipped")
    return stored


@shared_task
def report_daily() -> int:
    """Build the report of the previous day (UTC); return its id."""
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    return report_build(start=today - timedelta(days=1), end=today, kind=ReportKind.DAILY).pk


@shared_task
def sessions_delete_expired() -> int:
    """Delete the sessions older than CHAT_RETENTION_DAYS (0 keeps everything)."""
    return services.sessions_delete_expired(days=settings.CHAT_RETENTION_DAYS)


SUMMARY_GRACE = timedelta(minutes=5)
# Leases that ran out this long ago are deleted; until then a process back
# from a database blip can still renew them.
LEASE_KEEP = timedelta(hours=1)


@shared_task
def sessions_sweep() -> dict[str, int]:
    """End sessions whose sockets all vanished without closing; queue summaries that never came."""
    grace = timedelta(seconds=settings.CHAT_SOCKET_LEASE_SECONDS)
    ended = services.sessions_end_abandoned(grace=grace)
    leases = services.socket_leases_delete_expired(before=LEASE_KEEP)
    requeued = services.summaries_requeue_missing(grace=SUMMARY_GRACE)
    return {"ended": ended, "leases_deleted": leases, "summaries_requeued": requeued}


class LocalTasks:
    """Run tasks in this process when there is no broker (the embedded default).

    One thread of their own, one task at a time: a summary waiting on the
    model must not hold the thread that every socket's database calls share.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tasks-in-process")

    def submit(self, task, args: list) -> Future:
        """Queue the task to run on the task thread."""
        return self._executor.submit(self._run, task, args)

    @staticmethod
    def _run(task, args: list) -> None:
        try:
            task.apply(args=args)
        finally:
            connections.close_all()


local_tasks = LocalTasks()


# Tasks are sent from a transaction's on-commit hook, on the thread whose
# database connection every socket of the process shares; a broker that is
# down held that thread ~0.65 s per task. So they are sent from this one.
broker_send_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-send")


def _broker_send(task, args: list) -> None:
    """Send the task; one that cannot be sent is logged, and beat's sweep sends it again later."""
    try:
        task.apply_async(args=args)
    except Exception:
        logger.warning("could not send %s%s to the broker; the sweep will send it again", task.name, tuple(args))


def task_send(task, *args) -> Future:
    """Send the task to the broker from the sending thread; without one, run it on the in-process task thread."""
    if task.app.conf.task_always_eager:
        return local_tasks.submit(task, list(args))
    return broker_send_thread.submit(_broker_send, task, list(args))
