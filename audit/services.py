"""Writes to the audit record. Every change to a session or its events goes through here."""

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from .costs import Spend
from .models import FEEDBACK, ChatSession, Event, EventType, SessionStatus, SocketLease, Summary, SummaryStatus
from .redaction import redact


class SessionForbidden(Exception):
    """The session exists and belongs to someone else."""


@dataclass(frozen=True)
class SessionOpened:
    session: ChatSession
    resumed: bool


def session_owned_by(session: ChatSession, *, user_id: int | None, anon_key: str) -> bool:
    """Return whether the caller (a user, or an anonymous session key) owns the session."""
    if session.user_id is not None:
        return user_id == session.user_id
    return bool(anon_key) and user_id is None and anon_key == session.anon_key


def _column(meta: Any, name: str) -> str:
    """Return a model field's column, quoted for raw SQL."""
    return connection.ops.quote_name(meta.get_field(name).column)


def _db_value(meta: Any, name: str, raw: Any) -> Any:
    """Return a value as a raw SQL parameter for the model field (a UUID or a datetime as this database takes it)."""
    return meta.get_field(name).get_db_prep_value(raw, connection)


@functools.cache
def _insert_sql(model: type[models.Model], vendor: str, suffix: str) -> tuple[str, list[Any]]:
    """Return an INSERT of one row of `model` for this kind of database, ending in `suffix`, and its fields.

    The fields are the model's columns less those the database fills (an auto-increment id).
    """
    meta = model._meta
    # (db_returning: set on the fields the database fills; not in django-stubs.)
    fields = [field for field in meta.concrete_fields if not getattr(field, "db_returning", False)]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) VALUES ({placeholders}) {suffix}"
    return sql, fields


def _insert(instance: models.Model, suffix: str) -> tuple[Any, ...] | None:
    """Insert the model instance in one raw statement; return the row of the suffix's RETURNING, None if none.

    For the inserts of every handshake and every event: Django's save()
    path (signals, the compiler) cost several times the statement itself in
    the load bench's profile. An inserted instance is marked saved; an id
    that the database assigns is the caller's to set from the returned row.
    """
    sql, fields = _insert_sql(type(instance), connection.vendor, suffix)
    params = [field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is not None:
        instance._state.adding, instance._state.db = False, connection.alias
    return row


def _session_insert(session: ChatSession) -> bool:
    """Insert the new session unless a session with its id exists; return whether it was inserted.

    One statement (INSERT ... ON CONFLICT DO NOTHING RETURNING), where a
    locked read, a savepoint, the insert and its release took four: a session
    is opened on nearly every handshake, and they showed in the load bench's
    profile. PostgreSQL and SQLite (3.35+) both take it.
    """
    conflict = (
        f"ON CONFLICT ({_column(ChatSession._meta, 'id')}) DO NOTHING RETURNING {_column(ChatSession._meta, 'id')}"
    )
    return _insert(session, conflict) is not None


def session_open(*, session_id: UUID, user_id: int | None, anon_key: str, model: str, llm_mode: str) -> SessionOpened:
    """Create the session, or resume it for its owner (reopening it when it had ended).

    The insert is tried first: a new session, the usual case, is one
    statement, with no transaction of its own; resuming one is the insert
    that did nothing, then a locked read and an update in a transaction.
    """
    session = ChatSession(
        id=session_id, user_id=user_id, anon_key="" if user_id else anon_key, model=model, llm_mode=llm_mode
    )
    if _session_insert(session):
        return SessionOpened(session=session, resumed=False)
    with transaction.atomic():
        return _session_resume(
            session_id=session_id, user_id=user_id, anon_key=anon_key, model=model, llm_mode=llm_mode
        )


def _session_resume(
    *, session_id: UUID, user_id: int | None, anon_key: str, model: str, llm_mode: str
) -> SessionOpened:
    """Reopen the existing session for its owner (in the caller's transaction: it locks the row)."""
    session = ChatSession.objects.select_for_update().get(pk=session_id)
    if not session_owned_by(session, user_id=user_id, anon_key=anon_key) or session.deleted_at is not None:
        raise SessionForbidden(str(session_id))
    session.status = SessionStatus.ACTIVE
    session.ended_at = None
    session.duration_seconds = None
    session.model = model
    session.llm_mode = llm_mode
    session.last_activity_at = timezone.now()
    session.save(update_fields=["status", "ended_at", "duration_seconds", "model", "llm_mode", "last_activity_at"])
    return SessionOpened(session=session, resumed=True)


def session_rename(*, session_id: UUID, title: str) -> None:
    """Name the session as its owner chose; summaries no longer retitle it."""
    ChatSession.objects.filter(pk=session_id).update(title=title, title_by_owner=True)


def session_delete_by_owner(*, session_id: UUID) -> None:
    """The owner deleted the session: hide it from them for good, keep it for staff (retention still applies)."""
    ChatSession.objects.filter(pk=session_id, deleted_at__isnull=True).update(deleted_at=timezone.now())


def socket_lease_open(*, session_id: UUID, lease_id: UUID, visitor: str, address: str, seconds: float) -> None:
    """Record a socket connected to the session, alive for `seconds` unless renewed."""
    now = timezone.now()
    SocketLease.objects.create(
        id=lease_id,
        session_id=session_id,
        visitor=visitor,
        address=address,
        opened_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )


def socket_leases_renew(*, lease_ids: list[UUID], seconds: float) -> int:
    """Extend the leases of sockets still connected; return how many were renewed.

    An expired lease that is still stored comes back to life here: a socket
    whose process could not renew for a while (a database blip) counts again.
    """
    expires_at = timezone.now() + timedelta(seconds=seconds)
    return SocketLease.objects.filter(pk__in=lease_ids).update(expires_at=expires_at)


@transaction.atomic
def socket_leave(*, session_id: UUID, lease_id: UUID) -> bool:
    """Drop the socket's lease; end the session when no live socket is left. Return whether it ended.

    The session row is locked first, so of two last sockets leaving at once
    exactly one sees the other gone and ends the session.
    """
    if not ChatSession.objects.select_for_update().filter(pk=session_id).exists():
        return False
    SocketLease.objects.filter(pk=lease_id).delete()
    live = SocketLease.objects.filter(session_id=session_id, expires_at__gt=timezone.now())
    if live.exists():
        return False
    return session_end(session_id=session_id)


def sockets_live_count(*, visitor: str, address: str = "") -> tuple[int, int]:
    """Return how many live sockets the visitor and the address hold, across processes, in one query.

    Raw SQL because it runs on every handshake: the ORM's aggregate of two
    filtered counts took about a sixth of a handshake's CPU in the load
    bench's profile, nearly all of it building the query. No address: only
    the visitor's sockets are counted.
    """
    meta = SocketLease._meta
    visitor_column, address_column = _column(meta, "visitor"), _column(meta, "address")
    leases, now = connection.ops.quote_name(meta.db_table), _db_value(meta, "expires_at", timezone.now())
    if address:
        sql = (
            f"SELECT COUNT(CASE WHEN {visitor_column} = %s THEN 1 END), "
            f"COUNT(CASE WHEN {address_column} = %s THEN 1 END) FROM {leases} "
            f"WHERE ({visitor_column} = %s OR {address_column} = %s) AND {_column(meta, 'expires_at')} > %s"
        )
        params = [visitor, address, visitor, address, now]
    else:
        sql = f"SELECT COUNT(*), 0 FROM {leases} WHERE {visitor_column} = %s AND {_column(meta, 'expires_at')} > %s"
        params = [visitor, now]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        by_visitor, by_address = cursor.fetchone()
    return by_visitor, by_address


_COUNTERS: dict[str, dict[str, int]] = {
    EventType.USER_MESSAGE: {"message_count": 1, "turn_count": 1},
    EventType.ASSISTANT_MESSAGE: {"message_count": 1},
    EventType.TOOL_CALL: {"tool_call_count": 1},
    EventType.ERROR: {"error_count": 1},
}


PROVISIONAL_TITLE_CHARS = 60


def _storable(value: Any) -> Any:
    """Return `value` with what PostgreSQL cannot store removed from its strings.

    NUL and unpaired surrogates: client input is refused before it gets here,
    but a model's text or tool arguments may carry them, and the write
    failing would lose the whole reply.
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def _title_from(message: str) -> str:
    """A provisional title: the message on one line, cut at a word near PROVISIONAL_TITLE_CHARS."""
    line = " ".join(message.split())
    if len(line) <= PROVISIONAL_TITLE_CHARS:
        return line
    cut = line[: PROVISIONAL_TITLE_CHARS - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut[20:] else cut) + "…"


@dataclass
class SessionChanges:
    """What an event changes on its session's row: columns set, columns incremented, columns set only when empty."""

    values: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, int | Decimal] = field(default_factory=dict)
    if_blank: dict[str, str] = field(default_factory=dict)


def _session_change(*, session_id: UUID, changes: SessionChanges) -> int | None:
    """Apply the changes to the session's row; return its next_seq after them, None when there is no such session.

    One raw statement (UPDATE ... RETURNING): every event goes through here,
    and the ORM's update and the read of next_seq that followed it cost
    ~0.8 ms of CPU per event in isolation, several times the statements
    themselves. The UPDATE takes the row's write lock, so
    concurrent writers queue behind it. PostgreSQL and SQLite (3.35+) both
    take it.
    """
    meta = ChatSession._meta
    sets, params = [], []
    for name, value in changes.values.items():
        sets.append(f"{_column(meta, name)} = %s")
        params.append(_db_value(meta, name, value))
    for name, step in changes.steps.items():
        sets.append(f"{_column(meta, name)} = {_column(meta, name)} + %s")
        params.append(_db_value(meta, name, step) if isinstance(step, Decimal) else step)
    for name, value in changes.if_blank.items():
        column = _column(meta, name)
        sets.append(f"{column} = CASE WHEN {column} = '' THEN %s ELSE {column} END")
        params.append(value)
    sql = (
        f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {', '.join(sets)} "
        f"WHERE {_column(meta, 'id')} = %s RETURNING {_column(meta, 'next_seq')}"
    )
    params.append(_db_value(meta, "id", session_id))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


@transaction.atomic
def event_record(
    *,
    session_id: UUID,
    type: str,
    content: str = "",
    data: dict[str, Any] | None = None,
    retrying: bool = False,
    supersede: bool = False,
) -> Event:
    """Append an event to the session with the next seq, and update the session's counters.

    The UPDATE that bumps `next_seq` takes the session row's write lock first,
    so concurrent writers queue behind it and seqs stay contiguous.

    `retrying` marks a second try after the database connection failed: the
    first may have committed before the failure, so an event of this type
    already recorded for the same `data["turn_id"]` is returned instead of
    recorded twice.

    `supersede` (a user message that regenerates or edits the last one): the
    last turn's events, from its user message on, are marked superseded in
    the same transaction, and `data["supersedes"]` names that message's seq.
    """
    content, data = _storable(content), _storable(data or {})
    if retrying and data.get("turn_id"):
        recorded = Event.objects.filter(session_id=session_id, type=type, data__turn_id=data["turn_id"]).first()
        if recorded is not None:
            return recorded
    if settings.CHAT_REDACT_PII:
        content, data = redact(content), redact(data)
    now = timezone.now()
    changes = SessionChanges(values={"last_activity_at": now}, steps={"next_seq": 1, **_COUNTERS.get(type, {})})
    if type == EventType.USER_MESSAGE:
        # A message on a session that was ended (by the stale sweep) reopens it,
        # so it is summarized again, with this message, when it closes.
        changes.values.update(status=SessionStatus.ACTIVE, ended_at=None, duration_seconds=None)
        # Until a summary names it, a session is titled by its first message.
        changes.if_blank["title"] = _title_from(content)
    usage = data.get("usage") or {}
    # The reply's own tokens, and those of the call that summarized its cut history (when reported).
    side = (data.get("context") or {}).get("summary_usage") or {}
    for name in ("prompt_tokens", "completion_tokens"):
        tokens = int(usage.get(name) or 0) + (0 if side.get("estimated") else int(side.get(name) or 0))
        if tokens:
            changes.steps[name] = tokens
    if data.get("cost_usd"):
        changes.steps["cost_usd"] = Decimal(str(data["cost_usd"]))
    next_seq = _session_change(session_id=session_id, changes=changes)
    if next_seq is None:
        raise ChatSession.DoesNotExist(str(session_id))
    if supersede:
        live = Event.objects.filter(session_id=session_id, superseded=False)
        last = live.filter(type=EventType.USER_MESSAGE).order_by("-seq").values_list("seq", flat=True).first()
        if last is not None:
            live.filter(seq__gte=last).update(superseded=True)
            data["supersedes"] = last
    event = Event(session_id=session_id, seq=next_seq - 1, type=type, content=content, data=data, created_at=now)
    row = _insert(event, f"RETURNING {_column(Event._meta, 'id')}")
    if row is None:
        raise DatabaseError("the event's INSERT returned no id")
    (event.pk,) = row
    return event


class ReplyNotFound(Exception):
    """No reply of the session has that turn_id."""


class FeedbackLimitReached(Exception):
    """The reply was rated as many times as allowed."""


# A visitor may change their mind; beyond this many ratings of one reply they are refused.
FEEDBACK_PER_REPLY = 10


@transaction.atomic
def feedback_record(*, session_id: UUID, turn_id: str, rating: str, comment: str = "") -> Event:
    """Record a visitor's rating of a reply ("up" or "down") and their comment, as a `system` event.

    The event's data holds `kind` "feedback", the reply's `turn_id`, `reply_seq`
    and `model` (so satisfaction can be read per model), and the rating; the
    comment is its content. A later rating of the same reply supersedes the
    earlier one where ratings are counted (the latest counts), and both stay
    in the record.
    """
    reply = (
        Event.objects.filter(session_id=session_id, type=EventType.ASSISTANT_MESSAGE, data__turn_id=turn_id)
        .values_list("seq", "data__model")
        .first()
    )
    if reply is None:
        raise ReplyNotFound(turn_id)
    # The session row's lock first: two ratings at once are counted one after the other.
    ChatSession.objects.select_for_update().filter(pk=session_id).values_list("pk", flat=True).first()
    given = Event.objects.filter(
        session_id=session_id, type=EventType.SYSTEM, data__kind=FEEDBACK, data__turn_id=turn_id
    ).count()
    if given >= FEEDBACK_PER_REPLY:
        raise FeedbackLimitReached(turn_id)
    reply_seq, model = reply
    return event_record(
        session_id=session_id,
        type=EventType.SYSTEM,
        content=comment,
        data={"kind": FEEDBACK, "turn_id": turn_id, "rating": rating, "reply_seq": reply_seq, "model": model or ""},
    )


RETENTION_BATCH = 500


def sessions_delete_expired(*, days: int) -> int:
    """Delete sessions with no activity for `days` days, with their events and summaries; 0 keeps all.

    In batches, so a large backlog does not become one huge transaction.
    """
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while batch := list(
        ChatSession.objects.filter(last_activity_at__lt=cutoff).values_list("id", flat=True)[:RETENTION_BATCH]
    ):
        ChatSession.objects.filter(pk__in=batch).delete()
        deleted += len(batch)
    return deleted


def context_summary_save(*, session_id: UUID, text: str, through_seq: int) -> None:
    """Keep the rolling summary of the session's earlier turns, unless a newer one is stored."""
    ChatSession.objects.filter(pk=session_id, context_summary_seq__lt=through_seq).update(
        context_summary=text, context_summary_seq=through_seq
    )


# A turn taken over from a dead process may have sent frames no one recorded:
# the next turn's numbers start this far on, so a client that saw some of
# them never takes the new turn's frames for ones it has.
ORPHAN_FRAME_GAP = 100_000


@dataclass(frozen=True)
class Claim:
    """A turn claimed: the frame_seq its frames are numbered after, and whether other sockets are on the session."""

    base: int
    shared: bool


def _claimed(sessions: QuerySet[ChatSession], lease_id: UUID, now: datetime) -> Claim:
    others = SocketLease.objects.filter(session_id=OuterRef("pk"), expires_at__gt=now).exclude(pk=lease_id)
    base, shared = sessions.annotate(shared=Exists(others)).values_list("frame_seq", "shared").get()
    return Claim(base=base, shared=shared)


def _free_claim(*, session_id: UUID, lease_id: UUID, owner: str, now: datetime) -> Claim | None:
    """Claim a free turn slot in one statement (UPDATE ... RETURNING), the usual case; None when it is taken.

    Raw SQL because the ORM's update returns no values: this is once per turn,
    and two statements instead of one showed in the load bench's CPU profile.
    PostgreSQL and SQLite (3.35+) both take it.
    """
    session_fields, lease_fields = ChatSession._meta, SocketLease._meta
    sessions, leases = (
        connection.ops.quote_name(session_fields.db_table),
        connection.ops.quote_name(lease_fields.db_table),
    )
    sql = (
        f"UPDATE {sessions} SET {_column(session_fields, 'turn_started_at')} = %s, "
        f"{_column(session_fields, 'turn_lease')} = %s, {_column(session_fields, 'turn_owner')} = %s "
        f"WHERE {_column(session_fields, 'id')} = %s AND {_column(session_fields, 'deleted_at')} IS NULL "
        f"AND {_column(session_fields, 'turn_started_at')} IS NULL "
        f"RETURNING {_column(session_fields, 'frame_seq')}, EXISTS (SELECT 1 FROM {leases} "
        f"WHERE {_column(lease_fields, 'session')} = %s AND {_column(lease_fields, 'expires_at')} > %s "
        f"AND {_column(lease_fields, 'id')} <> %s)"
    )
    session_value, lease_value = _db_value(session_fields, "id", session_id), _db_value(lease_fields, "id", lease_id)
    params = [
        _db_value(session_fields, "turn_started_at", now),
        _db_value(session_fields, "turn_lease", lease_id),
        owner,
        session_value,
        session_value,
        _db_value(lease_fields, "expires_at", now),
        lease_value,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else Claim(base=row[0], shared=bool(row[1]))


def turn_claim(*, session_id: UUID, lease_id: UUID, stale_after: timedelta, owner: str = "") -> Claim | None:
    """Mark a turn as running on the session for this socket; return the claim, None when busy.

    The turn numbers its frames from the base + 1. The claim is free when
    nobody holds it (the usual case). It is taken over when this socket holds
    it (its release failed, yet it knows its turn is over), when the holder's
    lease has run out (its socket or process is gone), or, as a backstop,
    when it is older than `stale_after`; a turn taken over that never
    recorded its reply gets one then (see `turn_orphan_close`). `owner`: the
    channel of the process that runs the turn.

    Raise ChatSession.DoesNotExist when the session is gone (deleted as
    empty while its socket could not renew its lease, see `session_end`),
    SessionForbidden when its owner deleted it meanwhile.
    """
    now = timezone.now()
    claimed = _free_claim(session_id=session_id, lease_id=lease_id, owner=owner, now=now)
    if claimed is not None:
        return claimed
    claim = {"turn_started_at": now, "turn_lease": lease_id, "turn_owner": owner}
    sessions = ChatSession.objects.filter(pk=session_id, deleted_at__isnull=True)
    holder_live = SocketLease.objects.filter(pk=OuterRef("turn_lease"), expires_at__gt=now)
    stale = Q(turn_lease=lease_id) | ~Exists(holder_live) | Q(turn_started_at__lt=now - stale_after)
    with transaction.atomic():
        if not sessions.filter(stale).update(**claim, frame_seq=F("frame_seq") + ORPHAN_FRAME_GAP):
            if not sessions.exists():
                if ChatSession.objects.filter(pk=session_id).exists():
                    raise SessionForbidden(str(session_id))
                raise ChatSession.DoesNotExist(str(session_id))
            return None
        turn_orphan_close(session_id=session_id)
        return _claimed(sessions, lease_id, now)


ORPHAN_STOP_REASON = "server_lost"


def turn_orphan_close(*, session_id: UUID, stop_reason: str = ORPHAN_STOP_REASON) -> bool:
    """Record the reply of a turn whose process died before recording it; return whether one was missing.

    Nothing of what the model produced survived, so the reply is empty and
    marked stopped with reason `server_lost`: every user message keeps its
    one assistant event.
    """
    asked = Event.objects.filter(session_id=session_id, type=EventType.USER_MESSAGE).order_by("-seq").first()
    if asked is None:
        return False
    answered = Event.objects.filter(session_id=session_id, type=EventType.ASSISTANT_MESSAGE, seq__gt=asked.seq)
    if answered.exists():
        return False
    event_record(
        session_id=session_id,
        type=EventType.ASSISTANT_MESSAGE,
        data={"turn_id": asked.data.get("turn_id"), "stopped": True, "stop_reason": stop_reason},
    )
    return True


@transaction.atomic
def turn_release(
    *, session_id: UUID, lease_id: UUID, reply_missing: bool = False, frame_seq: int | None = None
) -> None:
    """Mark the session's turn as over, unless another socket has taken the claim over since.

    `reply_missing`: the turn's reply could not be recorded; an empty one,
    marked `not_recorded`, takes its place in the same transaction.
    `frame_seq`: the last frame number the turn used.
    """
    if reply_missing:
        turn_orphan_close(session_id=session_id, stop_reason="not_recorded")
    released: dict[str, Any] = {"turn_started_at": None, "turn_lease": None, "turn_owner": ""}
    if frame_seq is not None:
        released["frame_seq"] = frame_seq
    ChatSession.objects.filter(pk=session_id, turn_lease=lease_id).update(**released)


@transaction.atomic
def session_end(*, session_id: UUID) -> bool:
    """End the session and queue its summary once the transaction commits.

    Return False when it was already ended. A session in which nothing was
    ever recorded (a page opened and left) is deleted instead: it holds
    nothing to audit, and would only fill the visitor's list.
    """
    session = ChatSession.objects.select_for_update().filter(pk=session_id).first()
    if session is None or session.status == SessionStatus.ENDED:
        return False
    if session.turn_lease is not None:
        # Its turn's socket vanished mid-reply (a crashed process).
        if turn_orphan_close(session_id=session_id):
            session.refresh_from_db(fields=["message_count", "next_seq"])
        session.turn_started_at = session.turn_lease = None
        session.turn_owner = ""
        session.frame_seq += ORPHAN_FRAME_GAP
    if session.next_seq == 1:
        session.delete()
        return True
    now = timezone.now()
    session.status = SessionStatus.ENDED
    session.ended_at = now
    session.duration_seconds = round((now - session.started_at).total_seconds(), 3)
    session.save(
        update_fields=[
            "status",
            "ended_at",
            "duration_seconds",
            "turn_started_at",
            "turn_lease",
            "turn_owner",
            "frame_seq",
        ]
    )
    if session.message_count:
        summary_queue(session_id=session_id)
    return True


def summary_queue(*, session_id: UUID) -> None:
    """Queue the session's summary once the transaction commits.

    `robust`: a broker that is down is logged, not raised into the caller
    (the session has ended either way); beat's sweep queues it again later.
    """
    from .tasks import session_summarize, task_send

    def session_summarize_send() -> None:
        task_send(session_summarize, str(session_id))

    # A named function, not a partial: Django logs a robust hook's __qualname__.
    transaction.on_commit(session_summarize_send, robust=True)


def sessions_end_abandoned(*, grace: timedelta) -> int:
    """End every active session that has had no live socket for `grace` (its sockets vanished uncleanly).

    A lease counts until `grace` after it ran out: a process that could not
    renew for a while (the database was away) keeps its sessions.
    """
    cutoff = timezone.now() - grace
    live = SocketLease.objects.filter(session=OuterRef("pk"), expires_at__gt=cutoff)
    abandoned = ChatSession.objects.filter(status=SessionStatus.ACTIVE, last_activity_at__lt=cutoff).exclude(
        Exists(live)
    )
    session_ids = list(abandoned.values_list("id", flat=True))
    return sum(_session_end_if_abandoned(session_id=session_id, cutoff=cutoff) for session_id in session_ids)


@transaction.atomic
def _session_end_if_abandoned(*, session_id: UUID, cutoff: datetime) -> bool:
    """End the session unless a socket joined it since it was found abandoned."""
    if not ChatSession.objects.select_for_update().filter(pk=session_id).exists():
        return False
    if SocketLease.objects.filter(session_id=session_id, expires_at__gt=cutoff).exists():
        return False
    return session_end(session_id=session_id)


def socket_leases_delete_expired(*, before: timedelta) -> int:
    """Delete the leases that ran out more than `before` ago (nothing will renew them now)."""
    deleted, _ = SocketLease.objects.filter(expires_at__lt=timezone.now() - before).delete()
    return deleted


SUMMARIES_REQUEUE_BATCH = 500


def summaries_requeue_missing(*, grace: timedelta) -> int:
    """Queue again the summaries that never arrived (the broker was down, the task was lost).

    Only sessions ended more than `grace` ago, so a task still on its way is
    not doubled; a failed summary is left for staff to re-run.
    """
    cutoff = timezone.now() - grace
    missing = (
        ChatSession.objects.filter(status=SessionStatus.ENDED, message_count__gt=0, ended_at__lt=cutoff)
        .filter(
            Q(summary__isnull=True)
            | Q(summary__status=SummaryStatus.PENDING, summary__updated_at__lt=cutoff)
            | Q(summary__status=SummaryStatus.DONE, summary__covers_seq__lt=F("next_seq") - 1)
        )
        .values_list("id", flat=True)[:SUMMARIES_REQUEUE_BATCH]
    )
    session_ids = list(missing)
    with transaction.atomic():
        for session_id in session_ids:
            summary_queue(session_id=session_id)
    return len(session_ids)


@dataclass(frozen=True)
class SummaryFields:
    title: str
    text: str
    key_topics: list[str]
    action_items: list[str]
    sentiment: str
    model: str


@transaction.atomic
def summary_claim(*, session_id: UUID) -> int | None:
    """Return the last seq the summary must cover, or None when nothing needs writing.

    Nothing needs writing when the session is gone, still open (it will be
    summarized when it ends again), or already summarized up to its last event.
    """
    session = ChatSession.objects.select_for_update().filter(pk=session_id).first()
    if session is None or session.status != SessionStatus.ENDED:
        return None
    last_seq = session.next_seq - 1
    summary, _ = Summary.objects.get_or_create(session=session)
    if summary.status == SummaryStatus.DONE and summary.covers_seq >= last_seq:
        return None
    summary.attempts = F("attempts") + 1
    summary.save(update_fields=["attempts", "updated_at"])
    return last_seq


@transaction.atomic
def summary_save(*, session_id: UUID, covers_seq: int, fields: SummaryFields) -> bool:
    """Store the written summary unless a racing writer already covered as much; return whether it was stored."""
    summary = Summary.objects.select_for_update().filter(session_id=session_id).first()
    if summary is None:
        return False  # the session was deleted (retention) while its summary was being written
    if summary.status == SummaryStatus.DONE and summary.covers_seq >= covers_seq:
        return False
    summary.status = SummaryStatus.DONE
    summary.covers_seq = covers_seq
    summary.error = ""
    written = ["title", "text", "key_topics", "action_items", "sentiment", "model"]
    for name in written:
        setattr(summary, name, getattr(fields, name))
    # Only these: the attempts and the cost are bumped by UPDATEs of their own.
    summary.save(update_fields=["status", "covers_seq", "error", *written, "updated_at"])
    # A title the owner chose stays.
    ChatSession.objects.filter(pk=session_id, title_by_owner=False).update(title=fields.title[:200])
    return True


def summaries_rerun(*, session_ids: list[UUID]) -> int:
    """Queue the summaries of the ended sessions among these to be written again; return how many."""
    ended = list(
        ChatSession.objects.filter(pk__in=session_ids, status=SessionStatus.ENDED, message_count__gt=0).values_list(
            "id", flat=True
        )
    )
    with transaction.atomic():
        for session_id in ended:
            summary, _ = Summary.objects.get_or_create(session_id=session_id)
            # No longer "done": the task's claim then writes it again (one row, whatever races).
            Summary.objects.filter(pk=summary.pk).update(status=SummaryStatus.PENDING, error="")
            summary_queue(session_id=session_id)
    return len(ended)


def summary_spend_add(*, session_id: UUID, spend: Spend) -> None:
    """Add what a run of the summary's model calls used to its tokens and cost (one UPDATE: racing runs both count)."""
    prompt_tokens, completion_tokens = spend.tokens()
    Summary.objects.filter(session_id=session_id).update(
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        cost_usd=F("cost_usd") + (spend.cost() or Decimal(0)),
    )


def summary_mark_failed(*, session_id: UUID, error: str) -> None:
    """Mark the summary failed with its reason, unless a good one exists already."""
    Summary.objects.filter(session_id=session_id).exclude(status=SummaryStatus.DONE).update(
        status=SummaryStatus.FAILED, error=error[:2000], updated_at=timezone.now()
    )
