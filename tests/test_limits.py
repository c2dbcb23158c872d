"""Limits per visitor and per client address, on the real storage: Redis when REDIS_URL is set, else memory."""

import asyncio
import ipaddress
import json
import logging
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import redis.asyncio
from django.conf import settings as django_settings

from chat import limits
from chat.limits import message_allow, token_budget_charge, token_budget_check

from .conftest import REPO, free_port, on_redis, service_missing

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(autouse=True)
async def limits_connections_closed():
    """Close the limits' Redis connections before the test's event loop goes."""
    yield
    await limits.limits_storage_close()


def visitor_new() -> str:
    """Return a visitor of the test's own, so counts left by other tests do not matter."""
    return f"user:{uuid.uuid4().hex}"


def address_new() -> str:
    """Return a client address of the test's own."""
    return str(ipaddress.IPv6Address(uuid.uuid4().int))


async def test_visitor_limit_counts_messages_from_every_socket(settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 3
    visitor = visitor_new()
    # Three sockets of one visitor, each from an address of its own: the visitor's window holds them all.
    for _ in range(3):
        assert await message_allow(visitor=visitor, address=address_new()) is None

    refusal = await message_allow(visitor=visitor, address=address_new())

    assert refusal is not None
    assert refusal.code == "rate_limited"
    assert 0 < refusal.retry_after <= 60
    assert "try again in" in refusal.message
    assert await message_allow(visitor=visitor_new(), address=address_new()) is None


async def test_address_limit_counts_every_visitor_behind_it(settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 20
    settings.CHAT_RATE_LIMIT_ADDRESS_MESSAGES = 3
    address = address_new()
    for _ in range(3):
        assert await message_allow(visitor=visitor_new(), address=address) is None

    refusal = await message_allow(visitor=visitor_new(), address=address)

    assert refusal is not None
    assert refusal.code == "rate_limited"
    assert "network" in refusal.message
    assert 0 < refusal.retry_after <= 60
    assert await message_allow(visitor=visitor_new(), address=address_new()) is None


async def test_message_refused_for_its_address_leaves_the_visitor_window_untouched(settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 2
    settings.CHAT_RATE_LIMIT_ADDRESS_MESSAGES = 1
    crowded = address_new()
    assert await message_allow(visitor=visitor_new(), address=crowded) is None
    visitor = visitor_new()

    assert (await message_allow(visitor=visitor, address=crowded)).code == "rate_limited"

    assert await message_allow(visitor=visitor, address=address_new()) is None
    assert await message_allow(visitor=visitor, address=address_new()) is None
    assert await message_allow(visitor=visitor, address=address_new()) is not None


async def test_message_without_address_counts_for_the_visitor_only(settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 2
    settings.CHAT_RATE_LIMIT_ADDRESS_MESSAGES = 1
    for _ in range(2):
        assert await message_allow(visitor=visitor_new(), address="") is None


async def test_visitor_window_reopens_when_its_messages_age_out(settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 1
    settings.CHAT_RATE_LIMIT_WINDOW_SECONDS = 0.5  # rounded up to the library's whole second
    visitor, address = visitor_new(), address_new()
    assert await message_allow(visitor=visitor, address=address) is None
    refusal = await message_allow(visitor=visitor, address=address)
    assert refusal is not None
    assert 0 < refusal.retry_after <= 1

    await asyncio.sleep(refusal.retry_after + 0.05)

    assert await message_allow(visitor=visitor, address=address) is None


def seconds_to_next_utc_day(now: datetime) -> float:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return (tomorrow - now).total_seconds()


async def test_token_budget_refuses_once_used_up_until_the_next_utc_day(settings, monkeypatch):
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 1000
    visitor = visitor_new()
    assert await token_budget_check(visitor=visitor) is None
    await token_budget_charge(visitor=visitor, tokens=600)
    assert await token_budget_check(visitor=visitor) is None
    await token_budget_charge(visitor=visitor, tokens=500)

    refusal = await token_budget_check(visitor=visitor)

    assert refusal is not None
    assert refusal.code == "token_budget_exceeded"
    assert "1,000 tokens" in refusal.message
    assert "midnight UTC" in refusal.message
    assert abs(refusal.retry_after - seconds_to_next_utc_day(datetime.now(UTC))) < 5
    assert await token_budget_check(visitor=visitor_new()) is None

    tomorrow = datetime.now(UTC) + timedelta(seconds=refusal.retry_after + 1)
    monkeypatch.setattr(limits, "_utc_now", lambda: tomorrow)
    assert await token_budget_check(visitor=visitor) is None


async def test_token_budget_refuses_at_exactly_the_budget(settings):
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 1000
    visitor = visitor_new()
    await token_budget_charge(visitor=visitor, tokens=999)
    assert await token_budget_check(visitor=visitor) is None

    await token_budget_charge(visitor=visitor, tokens=1)

    assert (await token_budget_check(visitor=visitor)).code == "token_budget_exceeded"


@pytest.mark.parametrize(
    ("disabled", "other"),
    [
        ("CHAT_RATE_LIMIT_MESSAGES", "CHAT_RATE_LIMIT_ADDRESS_MESSAGES"),
        ("CHAT_RATE_LIMIT_ADDRESS_MESSAGES", "CHAT_RATE_LIMIT_MESSAGES"),
    ],
)
async def test_zero_disables_a_message_limit(settings, disabled, other):
    setattr(settings, disabled, 0)
    setattr(settings, other, 1000)
    visitor, address = visitor_new(), address_new()
    for _ in range(30):
        assert await message_allow(visitor=visitor, address=address) is None


async def test_zero_disables_the_token_budget(settings):
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 0
    visitor = visitor_new()
    await token_budget_charge(visitor=visitor, tokens=10**9)
    assert await token_budget_check(visitor=visitor) is None


async def test_storage_outage_lets_messages_and_turns_through_with_a_warning(settings, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    settings.CHAT_RATE_LIMIT_MESSAGES = 1
    settings.CHAT_RATE_LIMIT_ADDRESS_MESSAGES = 1
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 1
    visitor, address = visitor_new(), address_new()
    caplog.set_level(logging.WARNING, logger="chat.limits")

    assert await message_allow(visitor=visitor, address=address) is None
    assert await message_allow(visitor=visitor, address=address) is None
    await token_budget_charge(visitor=visitor, tokens=100)
    assert await token_budget_check(visitor=visitor) is None

    warnings = [record for record in caplog.records if record.name == "chat.limits"]
    assert len(warnings) == 4
    assert all(record.levelno == logging.WARNING for record in warnings)
    assert "let through" in warnings[0].getMessage()


async def test_a_redis_that_never_answers_costs_a_message_about_a_second(settings, caplog):
    """A Redis that takes the connection and then says nothing: the check gives up after REDIS_TIMEOUT_SECONDS."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    caplog.set_level(logging.WARNING, logger="chat.limits")
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        assert await message_allow(visitor=visitor_new(), address=address_new()) is None
        waited = loop.time() - started
    finally:
        silent.close()
    assert limits.REDIS_TIMEOUT_SECONDS <= waited < limits.REDIS_TIMEOUT_SECONDS + 2
    assert "TimeoutError" in caplog.records[-1].getMessage()


async def test_limits_count_on_a_redis_behind_a_unix_socket(settings, unix_redis, caplog):
    settings.REDIS_URL = unix_redis
    settings.CHAT_RATE_LIMIT_MESSAGES = 1
    caplog.set_level(logging.WARNING, logger="chat.limits")
    visitor = visitor_new()
    assert await message_allow(visitor=visitor, address=address_new()) is None
    refusal = await message_allow(visitor=visitor, address=address_new())
    assert refusal is not None and refusal.code == "rate_limited"
    assert not caplog.records  # counted in that Redis, not let through on a storage failure


async def test_a_cancelled_limit_check_is_cancelled_at_every_step(settings):
    """A cancel (a stop, a socket's end) reaches the check wherever it is, never swallowed on the way.

    With a socket timeout, redis-py sends each command through `asyncio.wait_for`,
    which on Python 3.11 drops a cancel arriving in the loop step its send ends
    in; the check then went on as if nothing had happened. Each step of the
    check (fresh connections every time) gets a cancel.
    """
    if not on_redis():
        service_missing("the limits keep their counts in Redis only when REDIS_URL is set")
    cancelled = 0
    # Every step up to 300 (the whole check takes ~20-70 on a local Redis), then ever wider ones
    # until the check ends before its cancel, however slow the Redis.
    for steps in [*range(300), *(int(300 * 1.2**n) for n in range(1, 60))]:
        await limits.limits_storage_close()
        checking = asyncio.create_task(message_allow(visitor=visitor_new(), address=address_new()))
        for _ in range(steps):
            await asyncio.sleep(0)
        if checking.done():
            break
        checking.cancel()
        await asyncio.wait([checking], timeout=5)
        assert checking.cancelled(), f"the cancel after {steps} steps was lost: {checking}"
        cancelled += 1
    assert checking.done() and not checking.cancelled() and cancelled > 10


async def test_limit_keys_in_redis_carry_the_limits_prefix(settings):
    if not on_redis():
        service_missing("the limits keep their counts in Redis only when REDIS_URL is set")
    visitor = visitor_new()
    await message_allow(visitor=visitor, address=address_new())

    client = redis.asyncio.Redis.from_url(django_settings.REDIS_URL)
    try:
        keys = await client.keys(f"*{visitor}*")
    finally:
        await client.aclose()

    assert keys
    assert all(key.decode().startswith(f"{limits.KEY_PREFIX}:") for key in keys)


SUBPROCESS_MESSAGES = """
import asyncio, json, sys
import django
django.setup()
from chat.limits import limits_storage_close, message_allow

async def main():
    refusals = [await message_allow(visitor=sys.argv[1], address=sys.argv[2]) for _ in range(2)]
    await limits_storage_close()
    print(json.dumps([refusal.code if refusal else None for refusal in refusals]))

asyncio.run(main())
"""


async def test_two_processes_share_one_visitor_window(settings):
    if not on_redis():
        service_missing("processes share counts only on Redis")
    settings.CHAT_RATE_LIMIT_MESSAGES = 3
    visitor = visitor_new()
    for _ in range(2):
        assert await message_allow(visitor=visitor, address=address_new()) is None
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(REPO),
        "REDIS_URL": django_settings.REDIS_URL,
        "CHAT_RATE_LIMIT_MESSAGES": "3",
        "CHAT_RATE_LIMIT_WINDOW_SECONDS": str(django_settings.CHAT_RATE_LIMIT_WINDOW_SECONDS),
        "CHAT_RATE_LIMIT_ADDRESS_MESSAGES": str(django_settings.CHAT_RATE_LIMIT_ADDRESS_MESSAGES),
    }

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUBPROCESS_MESSAGES,
        visitor,
        address_new(),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)

    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout.decode().strip().splitlines()[-1]) == [None, "rate_limited"]
    assert (await message_allow(visitor=visitor, address=address_new())).code == "rate_limited"
