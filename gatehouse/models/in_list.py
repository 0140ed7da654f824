"""`column IN <a list bound by name>`, as one statement text whatever the list's length."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal


class InList(ColumnElement[bool]):
    """On PostgreSQL `column = ANY(:name)`, the list bound as one array; elsewhere
    SQLAlchemy's expanding `column IN (:name_1, :name_2, ...)`.

    An expanding IN is rendered again at every execution for the list's length: one bound
    parameter with its cast per element, and a statement text that psycopg parses again
    and PostgreSQL never gets prepared. A worker's batch of 50 tag events runs eleven; with
    them bound as arrays the batch costs the worker 12.2-12.5 ms of CPU instead of 13.1-13.4
    (docs/benchmarks.md). SQLite has no arrays.
    """

    inherit_cache = True
    type = Boolean()
    # A comparison: without this, where the database has no boolean type (SQLite) the
    # compiler writes `... IN (...) = 1`, which no index serves.
    _is_implicitly_boolean = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]

    def __init__(self, column: Any, name: str) -> None:
        self.column = column
        self.name = name


def in_list(column: Any, name: str) -> InList:
    """`column IN` the list passed as parameter `name` at execution."""
    return InList(column, name)


@compiles(InList)
def _expanding(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw))


@compiles(InList, "postgresql")
def _any(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(element.name, type_=ARRAY(element.column.type))
    bound = compiler.process(array, **kw)
    if compiler.dialect.driver == "psycopg":
        # Sent in binary (psycopg's `%(name)b`): psycopg dumps a list as text element by
        # element, escaping each (1.3 µs a string), and in binary at 0.3 µs.
        bound = bound.replace(f"%({element.name})s", f"%({element.name})b", 1)
    return f"{compiler.process(element.column, **kw)} = ANY({bound})"
