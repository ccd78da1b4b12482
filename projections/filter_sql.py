"""The filter language (:mod:`schemas.filters`) compiled to DuckDB SQL.

Every value is a bound parameter; only column names and JSON paths, both checked by the
parser against fixed rules, are written into the SQL. Each condition is made true or
false (never NULL), so ``$not`` and ``$ne`` match a memory that lacks the field, as the
language says.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from memstream.schemas.filters import And, Cond, Node, Not, Or

__all__ = ["compile_sql"]

_CMP: Final = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NUMBER_TYPES: Final = "('BIGINT', 'UBIGINT', 'DOUBLE', 'HUGEINT')"


class _Compiler:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.params: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        if isinstance(value, dt.datetime):
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f"${name}"

    def node(self, node: Node) -> str:
        match node:
            case And(items):
                return "(" + " AND ".join(self.node(i) for i in items) + ")"
            case Or(items):
                return "(" + " OR ".join(self.node(i) for i in items) + ")"
            case Not(item):
                return f"(NOT {self.node(item)})"
            case Cond():
                return f"coalesce({self.cond(node)}, false)"
        raise TypeError(node)

    def cond(self, c: Cond) -> str:
        values = c.value if isinstance(c.value, tuple) else (c.value,)
        if c.field == "metadata":
            return self.metadata(c, values)
        if c.field == "tags":
            if c.op == "in":
                return f"list_has_any(tags, {self.bind(list(values))}::VARCHAR[])"
            return f"list_contains(tags, {self.bind(values[0])})"
        if c.op == "in":
            return f"{c.field} IN ({', '.join(self.bind(v) for v in values)})"
        return f"{c.field} {_CMP[c.op]} {self.bind(values[0])}"

    def metadata(self, c: Cond, values: tuple[Any, ...]) -> str:
        path = "$" + "".join(f'."{key}"' for key in c.path)
        value = f"json_extract(metadata, '{path}')"
        # The value, or each element of a list: a list matches when any element does.
        elements = (
            f"(CASE WHEN json_type({value}) = 'ARRAY' THEN json_extract({value}, '$[*]') "
            f"ELSE [{value}] END)"
        )
        op = "eq" if c.op == "in" else c.op
        test = " OR ".join(self.element(op, v) for v in values)
        return f"len(list_filter({elements}, lambda x: {test})) > 0"

    def element(self, op: str, v: Any) -> str:
        # CASE, not AND: DuckDB may evaluate both sides of an AND, and a cast of the
        # wrong type fails the query rather than being false.
        cmp = _CMP[op]
        if isinstance(v, bool):
            check, test = "= 'BOOLEAN'", f"x::BOOLEAN = {self.bind(v)}"
        elif isinstance(v, int | float):
            check, test = f"IN {_NUMBER_TYPES}", f"x::DOUBLE {cmp} {self.bind(float(v))}"
        elif isinstance(v, dt.datetime):
            check = "= 'VARCHAR'"
            test = f"TRY_CAST(x ->> '$' AS TIMESTAMPTZ) {cmp} {self.bind_tz(v)}"
        else:
            check, test = "= 'VARCHAR'", f"(x ->> '$') = {self.bind(v)}"
        return f"(CASE WHEN json_type(x) {check} THEN {test} ELSE false END)"

    def bind_tz(self, value: dt.datetime) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value.astimezone(dt.UTC)
        return f"${name}::TIMESTAMPTZ"


def compile_sql(node: Node, prefix: str = "f") -> tuple[str, dict[str, Any]]:
    """A SQL condition over the memory columns (``kind``, ``agent``, ``domain``,
    ``tags``, the scope fields, ``created_at``, ``updated_at`` as naive UTC timestamps,
    and ``metadata`` as JSON), and its named parameters (``$<prefix>0``, ...)."""
    compiler = _Compiler(prefix)
    return compiler.node(node), compiler.params
