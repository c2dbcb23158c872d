"""The tool registry: schemas derived from signatures, argument checks, and failures as results."""

import asyncio
import json
import time
from typing import Literal

import pytest

from chat.tools import registry
from chat.tools.registry import arguments_check, schema_from_signature, tool, tool_run


def sample(city: str, days: int = 3, unit: Literal["c", "f"] = "c", tags: list[str] | None = None) -> dict:
    """Forecast the weather.

    Args:
        city: The city name.
        days: How many days ahead.
    """
    return {}


def test_schema_is_derived_from_the_signature():
    schema = schema_from_signature(sample)
    assert schema["required"] == ["city"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["city"] == {"type": "string", "description": "The city name."}
    assert schema["properties"]["days"] == {"type": "integer", "description": "How many days ahead.", "default": 3}
    assert schema["properties"]["unit"] == {"type": "string", "enum": ["c", "f"], "default": "c"}
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "default": None}


def test_builtin_tools_are_offered_with_descriptions():
    offered = {entry.name: entry.schema() for entry in registry.tools_enabled()}
    assert {"current_time", "system_status"} <= set(offered)
    clock = offered["current_time"]["function"]
    assert clock["description"].startswith("Return the current date and time")
    assert clock["parameters"]["properties"]["timezone"]["type"] == "string"


def test_tools_can_be_limited_by_setting(settings):
    settings.CHAT_TOOLS = ["current_time"]
    assert [entry.name for entry in registry.tools_enabled()] == ["current_time"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "missing argument 'city'"),
        ({"city": 3}, "argument 'city' must be string"),
        ({"city": "Oslo", "days": True}, "argument 'days' must be integer"),
        ({"city": "Oslo", "unit": "k"}, "argument 'unit' must be one of ['c', 'f']"),
        ({"city": "Oslo", "wind": 1}, "unknown argument 'wind'"),
        ([], "arguments must be a JSON object"),
    ],
)
def test_bad_arguments_are_named(arguments, problem):
    assert problem in arguments_check(arguments, schema_from_signature(sample))


def test_good_arguments_pass():
    assert arguments_check({"city": "Oslo", "days": 2, "tags": ["a"]}, schema_from_signature(sample)) == []


def run(name, arguments):
    return asyncio.run(tool_run(name=name, arguments=arguments))


def test_current_time_in_a_zone():
    outcome = run("current_time", json.dumps({"timezone": "Asia/Tokyo"}))
    assert outcome.ok, outcome.result
    assert outcome.result["timezone"] == "Asia/Tokyo"
    assert outcome.result["iso"].endswith("+09:00")


def test_unknown_zone_is_a_failed_result():
    outcome = run("current_time", json.dumps({"timezone": "Mars/Olympus"}))
    assert not outcome.ok
    assert "unknown time zone" in outcome.result


def test_system_status_reports_figures():
    outcome = run("system_status", "{}")
    assert outcome.ok, outcome.result
    assert 0 <= outcome.result["memory_percent"] <= 100
    assert outcome.result["uptime_seconds"] > 0


def test_unknown_tool_invalid_json_and_bad_arguments_are_failed_results():
    assert run("no_such_tool", "{}").result == "unknown tool 'no_such_tool'"
    assert run("current_time", "{broken").result == "arguments are not a valid JSON object"
    assert run("current_time", '{"timezone": 5}').result == "argument 'timezone' must be string"


@pytest.fixture
def temporary_tools():
    saved = dict(registry._registry)
    yield
    registry._registry.clear()
    registry._registry.update(saved)


def test_exception_and_timeout_become_failed_results(temporary_tools):
    @tool
    def explode() -> str:
        """Fail."""
        raise RuntimeError("boom")

    @tool(timeout=0.2)
    async def dawdle() -> str:
        """Take too long."""
        await asyncio.sleep(5)
        return "late"

    exploded = run("explode", "{}")
    assert (exploded.ok, exploded.result) == (False, "RuntimeError: boom")
    started = time.monotonic()
    timed_out = run("dawdle", "{}")
    assert (timed_out.ok, timed_out.result) == (False, "tool timed out after 0.2 s")
    assert time.monotonic() - started < 2
    assert json.loads(timed_out.for_model()) == {"ok": False, "error": "tool timed out after 0.2 s"}


def test_a_stop_that_arrives_as_a_tool_finishes_is_not_lost(temporary_tools):
    """A cancel (the user's stop) in the same step of the loop as the tool's end still cancels the turn.

    `asyncio.wait_for` on Python 3.11 returned the tool's result then and
    dropped the cancel, so the turn went on after the stop.
    """

    @tool
    async def quick() -> str:
        """Answer after one step."""
        await asyncio.sleep(0)
        return "done"

    async def cancel_at_every_step() -> list[str]:
        seen = []
        for steps in range(6):
            running = asyncio.create_task(tool_run(name="quick", arguments="{}"))
            for _ in range(steps):
                await asyncio.sleep(0)
            if running.done():
                seen.append("finished")
                continue
            running.cancel()
            await asyncio.wait([running])
            seen.append("cancelled" if running.cancelled() else "cancel lost")
        return seen

    seen = asyncio.run(cancel_at_every_step())
    assert "cancel lost" not in seen and seen[0] == "cancelled" and seen[-1] == "finished", seen


@pytest.mark.parametrize(
    ("expression", "result"),
    [("(2 + 3) * 4", 20), ("7 / 2", 3.5), ("7 // 2", 3), ("2 ** 10", 1024), ("2^8", 256), ("-3 + +4", 1),
     ("max(1, 5, 3)", 5), ("sqrt(16) + abs(-2)", 6), ("10 % 4", 2)],
)  # fmt: skip
def test_the_calculator_does_arithmetic(expression, result):
    outcome = run("calculate", json.dumps({"expression": expression}))
    assert outcome.ok, outcome.result
    assert outcome.result == {"expression": expression, "result": result}


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ('__import__("os").system("true")', "not allowed"),
        ("(1).__class__", "not allowed"),
        ("open('x')", "not allowed"),
        ("x + 1", "not allowed"),
        ('"a" * 3', "not allowed"),
        ("1 / 0", "division by zero"),
        ("9 ** 9999", "exponents are limited"),
        ("10.0 ** 300 * 10.0 ** 300", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("round(1, -10 ** 12)", "round() takes at most"),
        ("round(1.5, 0.5)", "round() takes at most"),
        ("exp(1000)", "math range error"),
        ("max(10.0 ** 200, 10.0 ** 200) * 10.0 ** 200", "too large"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 301, "limited to 300 characters"),
    ],
)
def test_the_calculator_refuses_anything_but_arithmetic(expression, problem):
    outcome = run("calculate", json.dumps({"expression": expression}))
    assert not outcome.ok
    assert problem in outcome.result


def test_argument_descriptions_may_span_lines():
    schema = registry.tool_get("calculate").parameters
    assert schema["properties"]["expression"]["description"].endswith('"(2 + 3) * 4 / 7" or "sqrt(2) ** 2".')
