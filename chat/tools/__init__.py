"""Tools the model may call. Importing this package registers the built-in ones."""

from . import calculator, clock, session_search, system_status  # noqa: F401  (registration by import)
from .registry import Tool, ToolContext, ToolOutcome, tool, tool_run, tools_enabled

__all__ = ["Tool", "ToolContext", "ToolOutcome", "tool", "tool_run", "tools_enabled"]
