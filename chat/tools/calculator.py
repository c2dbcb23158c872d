"""The calculator tool: arithmetic by walking the expression's syntax tree, never `eval`."""

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from .registry import tool

MAX_EXPRESSION_CHARS = 300
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
MAX_ROUND_DIGITS = 100

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _bounded(result: Any) -> int | float:
    """Return the intermediate result, refusing what is not a real number or too large to go on with."""
    if isinstance(result, complex):
        raise ValueError("the result is not a real number")
    if abs(result) > MAX_MAGNITUDE:
        raise ValueError("the result is too large")
    return result


def _evaluate(node: ast.AST) -> int | float:
    """Evaluate one node of the allowed arithmetic subset; anything else is refused."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponents are limited to ±{MAX_EXPONENT}")
        return _bounded(_BINARY[type(node.op)](left, right))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        arguments = [_evaluate(arg) for arg in node.args]
        if node.func.id == "round" and len(arguments) > 1:
            # round(x, -n) computes 10**n: as costly as a huge exponent.
            if not isinstance(arguments[1], int) or abs(arguments[1]) > MAX_ROUND_DIGITS:
                raise ValueError(f"round() takes at most ±{MAX_ROUND_DIGITS} whole digits")
        return _bounded(_FUNCTIONS[node.func.id](*arguments))
    raise ValueError(f"not allowed in an expression: {ast.unparse(node)}")


@tool
def calculate(expression: str) -> dict[str, int | float | str]:
    """Evaluate an arithmetic expression exactly, without running any code.

    Args:
        expression: Arithmetic with + - * / // % ** and parentheses, the constants pi, e, tau
            and the functions sqrt, abs, round, min, max, log, log10, exp, sin, cos, tan, floor,
            ceil. For example "(2 + 3) * 4 / 7" or "sqrt(2) ** 2".
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expressions are limited to {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (OverflowError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return {"expression": expression, "result": value}
