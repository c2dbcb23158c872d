"""The tool registry: a tool is a typed function with a docstring, declared once.

Its JSON schema for the model is derived from the signature (names, types,
defaults, `Literal` enums) and the docstring's `Args:` section; arguments are
checked against that schema before the call, and every failure becomes a
result with `ok: false` that the model sees.
"""

import asyncio
import inspect
import json
import re
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings

from ..database import database_async

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class ToolContext:
    """Who is calling: handed to a tool that declares a parameter of this type, never shown to the model."""

    session_id: UUID
    user_id: int | None
    anon_key: str


@dataclass(frozen=True)
class Tool:
    """A registered tool."""

    name: str
    description: str
    function: Callable[..., Any]
    parameters: dict[str, Any]
    timeout: float | None = None
    # The parameter that receives the ToolContext, if the tool wants one.
    context_parameter: str | None = None
    # A sync tool that reads the database runs through database_async.
    database: bool = False

    def schema(self) -> dict[str, Any]:
        """Return the tool as offered to the model."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolOutcome:
    """What running a tool call produced."""

    ok: bool
    result: Any
    duration_ms: int

    def for_model(self) -> str:
        """Return the outcome as the tool message content the model reads."""
        body = {"ok": True, "result": self.result} if self.ok else {"ok": False, "error": self.result}
        text = json.dumps(body, default=str)
        limit = settings.CHAT_TOOL_RESULT_MAX_CHARS
        # A huge result would crowd the context out; the model is told it was cut.
        return text if len(text) <= limit else f"{text[:limit]} …[cut: {len(text) - limit} more characters]"


_registry: dict[str, Tool] = {}


def _type_schema(annotation: Any) -> dict[str, Any]:
    """Return the JSON schema of one parameter type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = list(typing.get_args(annotation))
        return {"type": _JSON_TYPES.get(type(values[0]), "string"), "enum": values}
    if origin in (types.UnionType, typing.Union):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _type_schema(members[0])
    if origin is list:
        (item,) = typing.get_args(annotation) or (str,)
        return {"type": "array", "items": _type_schema(item)}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    raise TypeError(f"tool parameter type {annotation!r} has no JSON schema")


def _docstring_parts(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and the `Args:` descriptions."""
    doc = inspect.getdoc(func) or ""
    description, _, args_block = doc.partition("\nArgs:\n")
    arg_docs: dict[str, str] = {}
    name = None
    for line in args_block.splitlines():
        # "    name: text" starts an argument; deeper-indented lines continue it.
        if match := re.match(r"^ {4}(\w+):\s*(.*)$", line):
            name = match.group(1)
            arg_docs[name] = match.group(2).strip()
        elif name and line.strip():
            arg_docs[name] += " " + line.strip()
    return " ".join(description.split()), arg_docs


def schema_from_signature(func: Callable[..., Any]) -> dict[str, Any]:
    """Derive the JSON schema of a function's keyword parameters."""
    hints = typing.get_type_hints(func)
    _, arg_docs = _docstring_parts(func)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(func).parameters.items():
        if hints[name] is ToolContext:
            continue
        prop = _type_schema(hints[name])
        if name in arg_docs:
            prop["description"] = arg_docs[name]
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
        else:
            prop["default"] = parameter.default
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def tool(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout: float | None = None,
    database: bool = False,
):
    """Register a function as a tool (usable bare, `@tool`, or with options, `@tool(timeout=2)`)."""

    def register(target: Callable[..., Any]) -> Callable[..., Any]:
        description, _ = _docstring_parts(target)
        hints = typing.get_type_hints(target)
        entry = Tool(
            name=name or target.__name__,
            description=description,
            function=target,
            parameters=schema_from_signature(target),
            timeout=timeout,
            context_parameter=next((param for param, hint in hints.items() if hint is ToolContext), None),
            database=database,
        )
        _registry[entry.name] = entry
        return target

    return register(func) if func is not None else register


def tools_enabled() -> list[Tool]:
    """Return the tools this deployment offers (setting `CHAT_TOOLS`; empty means all)."""
    wanted = settings.CHAT_TOOLS
    return [entry for entry in _registry.values() if not wanted or entry.name in wanted]


def tool_get(name: str) -> Tool | None:
    """Return the enabled tool of that name, or None."""
    return next((entry for entry in tools_enabled() if entry.name == name), None)


def _value_matches(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "array":
        ok = isinstance(value, list) and all(_value_matches(item, schema.get("items", {})) for item in value)
    else:
        ok = True
    return ok and ("enum" not in schema or value in schema["enum"])


def arguments_check(arguments: Any, schema: dict[str, Any]) -> list[str]:
    """Return what is wrong with the arguments for this schema (empty when they fit)."""
    if not isinstance(arguments, dict):
        return ["arguments must be a JSON object"]
    properties = schema.get("properties", {})
    problems = [f"missing argument '{name}'" for name in schema.get("required", []) if name not in arguments]
    for key, value in arguments.items():
        if key not in properties:
            problems.append(f"unknown argument '{key}'")
        elif not _value_matches(value, properties[key]):
            allowed = properties[key].get("enum")
            expected = f"one of {allowed}" if allowed else properties[key].get("type")
            problems.append(f"argument '{key}' must be {expected}")
    return problems


def arguments_parse(raw: str) -> dict[str, Any] | None:
    """Return the arguments JSON as a dict, or None when it is not a JSON object."""
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def tool_run(*, name: str, arguments: str, context: ToolContext | None = None) -> ToolOutcome:
    """Run one tool call; every failure is an outcome with ok False, never an exception."""
    started = time.monotonic()

    def outcome(ok: bool, result: Any) -> ToolOutcome:
        return ToolOutcome(ok=ok, result=result, duration_ms=int((time.monotonic() - started) * 1000))

    entry = tool_get(name)
    if entry is None:
        return outcome(False, f"unknown tool '{name}'")
    parsed = arguments_parse(arguments)
    if parsed is None:
        return outcome(False, "arguments are not a valid JSON object")
    problems = arguments_check(parsed, entry.parameters)
    if problems:
        return outcome(False, "; ".join(problems))
    if entry.context_parameter:
        if context is None:
            return outcome(False, "this tool needs to know who is calling")
        parsed[entry.context_parameter] = context
    if inspect.iscoroutinefunction(entry.function):
        call = entry.function
    elif entry.database:
        call = database_async(entry.function)
    else:
        # Off the thread the database calls share: a slow tool must not hold it.
        call = sync_to_async(entry.function, thread_sensitive=False)
    timeout = entry.timeout or settings.CHAT_TOOL_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(timeout):
            result = await call(**parsed)
    except TimeoutError:
        return outcome(False, f"tool timed out after {timeout:g} s")
    except Exception as exc:  # a tool's own failure is an answer for the model, not a crash
        return outcome(False, f"{type(exc).__name__}: {exc}")
    return outcome(True, result)
