"""FunctionGym's hidden rules: arithmetic over ``a, b, c, d``, parsed once and evaluated safely.

A rule such as ``(a + b) ** 2 * c - d`` is parsed with :mod:`ast` and checked against a short
whitelist: numbers, the names ``a`` ``b`` ``c`` ``d``, unary ``+``/``-``, and the binary
operators ``+ - * /`` and ``**`` (UserRL's rules square terms and, in a few rules, raise one
input to the power of another). Anything else (calls, attributes, subscripts, other names) is
rejected when the rule is loaded, and evaluation walks the checked tree itself: the text is never
handed to ``eval``. All arithmetic is on floats, so a power costs constant time whatever the
exponent (``1 ** 10 ** 27`` is 1, as in UserRL's test cases). Evaluation raises
:class:`RuleEvaluationError` for a division by zero, a result too large for a float, or a result
that is not a real number, so a probe that cannot be computed gets a message instead of a number.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Callable, Union

VARIABLES = ("a", "b", "c", "d")
MAX_RULE_CHARS = 500


class RuleSyntaxError(ValueError):
    """A rule that is not plain arithmetic over a, b, c, d."""


class RuleEvaluationError(ArithmeticError):
    """A rule that has no finite real value at the given inputs."""


def _power(base: float, exponent: float) -> float:
    if base == 0 and exponent < 0:
        raise RuleEvaluationError("division by zero")
    result = base ** exponent
    if isinstance(result, complex):
        raise RuleEvaluationError("the result is not a real number")
    return result


def _divide(left: float, right: float) -> float:
    if right == 0:
        raise RuleEvaluationError("division by zero")
    return left / right


_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: _divide,
    ast.Pow: _power,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}

Node = Union["_Number", "_Variable", "_Unary", "_Binary"]


@dataclass(frozen=True)
class _Number:
    value: float

    def __call__(self, env: dict[str, float]) -> float:
        return self.value


@dataclass(frozen=True)
class _Variable:
    name: str

    def __call__(self, env: dict[str, float]) -> float:
        return env[self.name]


@dataclass(frozen=True)
class _Unary:
    op: Callable[[float], float]
    operand: "Node"

    def __call__(self, env: dict[str, float]) -> float:
        return self.op(self.operand(env))


@dataclass(frozen=True)
class _Binary:
    op: Callable[[float, float], float]
    left: "Node"
    right: "Node"

    def __call__(self, env: dict[str, float]) -> float:
        return self.op(self.left(env), self.right(env))


def _convert(node: ast.AST, text: str) -> Node:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _Number(float(node.value))
    if isinstance(node, ast.Name) and node.id in VARIABLES:
        return _Variable(node.id)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _Unary(_UNARY[type(node.op)], _convert(node.operand, text))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _Binary(_BINARY[type(node.op)], _convert(node.left, text), _convert(node.right, text))
    shown = ast.get_source_segment(text, node) or type(node).__name__
    raise RuleSyntaxError(f"rule {text!r}: {shown!r} is not allowed (only numbers, a, b, c, d, + - * / ** and parentheses)")


class Rule:
    """A parsed rule; ``rule(a, b, c, d)`` evaluates it with floats."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip():
            raise RuleSyntaxError("a rule must be a non-empty text")
        if len(text) > MAX_RULE_CHARS:
            raise RuleSyntaxError(f"rule is {len(text)} characters long; at most {MAX_RULE_CHARS}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise RuleSyntaxError(f"rule {text!r} is not an arithmetic expression: {exc.msg}") from None
        self.text = text.strip()
        self._root = _convert(tree.body, self.text)

    def __call__(self, a: float, b: float, c: float, d: float) -> float:
        env = {"a": float(a), "b": float(b), "c": float(c), "d": float(d)}
        try:
            value = self._root(env)
        except OverflowError:
            raise RuleEvaluationError("the result is too large") from None
        if isinstance(value, complex) or not math.isfinite(value):
            raise RuleEvaluationError("the result is not a finite real number")
        return float(value)

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"
