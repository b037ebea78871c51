"""A safe parser for integer arithmetic expressions (no `eval`): + - * / and parentheses only.

References:
    Python `ast` module documentation (https://docs.python.org/3/library/ast.html).
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

_ALLOWED_CHARS = re.compile(r"^[0-9+\-*/() \t]*$")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
MAX_EXPR_CHARS = 256
MAX_LITERAL_DIGITS = 12


def parse_expression(text: str, *, allow_unary: bool = False) -> tuple[Fraction, list[int]]:
    """Exact value (a `Fraction`) and the integer literals of an arithmetic expression.

    Only non-negative integer literals, binary + - * / and parentheses (and unary minus when
    `allow_unary`) are accepted. The text is checked against a character whitelist before `ast.parse`
    and the tree is walked by hand, so nothing is ever executed.

    Raises:
        ValueError: on any other syntax, an over-long expression or literal, or division by zero.
    """
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPR_CHARS} characters")
    if not _ALLOWED_CHARS.match(text):
        raise ValueError(f"disallowed characters in expression {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as e:
        raise ValueError(f"cannot parse expression {text!r}: {e}") from None
    literals: list[int] = []

    def walk(node: ast.AST, depth: int) -> Fraction:
        if depth > 64:
            raise ValueError("expression nested too deeply")
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if len(str(node.value)) > MAX_LITERAL_DIGITS:
                raise ValueError("integer literal too long")
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left, depth + 1), walk(node.right, depth + 1)
            op = _BINOPS[type(node.op)]
            if op == "+":
                return left + right
            if op == "-":
                return left - right
            if op == "*":
                return left * right
            if right == 0:
                raise ValueError("division by zero")
            return left / right
        if allow_unary and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand, depth + 1)
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    return walk(tree.body, 0), literals
