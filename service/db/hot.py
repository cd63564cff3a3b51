"""Hot statements: the few writes every request makes, run on SQLite's own cursor.

A quota claim, a reservation row, a usage record: each a Core statement built once. Through
SQLAlchemy's execution machinery such a statement costs ~14 µs of CPU on SQLite; the
driver's cursor runs it in ~4 (docs/performance.md). A statement marked `hot` is compiled by
SQLAlchemy once per dialect and set of parameter names (the same SQL it would send, its
bind processors: dates, JSON), and then, in the batch writer's SQLite transactions
(db/batch.py), executed on that transaction's own DBAPI connection. Elsewhere (PostgreSQL,
any other caller) it is an ordinary statement.

Only statements whose results need no conversion may be hot (RETURNING plain integers or
strings), whose parameters are plain values (no expanding IN, no callables), and that set
every column with a Python-side default (an INSERT) or onupdate (an UPDATE), which the
cursor would not fill in: all checked when the statement is first compiled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Insert, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

S = TypeVar("S", bound=Executable)
_HOT: dict[int, Executable] = {}


def hot(statement: S) -> S:
    """Mark a statement (built once, at import) as one every request runs."""
    _HOT[id(statement)] = statement
    return statement


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    fixed: Mapping[str, Any]  # the values bound in the statement itself

    def row(self, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for name, process in zip(self.names, self.processors, strict=True):
            value = parameters[name] if name in parameters else self.fixed[name]
            values.append(process(value) if process is not None else value)
        return tuple(values)


class Rows:
    """The little of a Result that the batch ops read."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def all(self) -> list[tuple[Any, ...]]:
        return self._rows

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise ValueError(f"expected one row, got {len(self._rows)}")
        return self._rows[0][0]


_CACHE: dict[tuple[int, str, frozenset[str]], _Compiled] = {}


class HotConnection:
    """A SQLAlchemy Connection (to SQLite) whose hot statements go to its DBAPI cursor, in
    the same transaction; every other statement goes through SQLAlchemy."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._driver: Any = connection.connection.driver_connection
        self._dialect = connection.dialect

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        if _HOT.get(id(statement)) is not statement:
            return self._connection.execute(statement, parameters)
        assert isinstance(statement, Executable)
        many = isinstance(parameters, Sequence) and not isinstance(parameters, Mapping)
        first: Mapping[str, Any] = (parameters[0] if many else parameters) or {}
        compiled = _compiled(statement, self._dialect, first.keys())
        cursor = self._driver.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, [compiled.row(p) for p in parameters])
                return Rows([], cursor.rowcount)
            cursor.execute(compiled.sql, compiled.row(first))
            return Rows(cursor.fetchall() if cursor.description else [], cursor.rowcount)
        except sqlite3.Error as exc:  # as SQLAlchemy would raise it (OperationalError, ...)
            raise DBAPIError.instance(compiled.sql, None, exc, sqlite3.Error,
                                      hide_parameters=True) from exc
        finally:
            cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _compiled(statement: Executable, dialect: Dialect, keys: Any) -> _Compiled:
    names = frozenset(keys)
    cache_key = (id(statement), dialect.name, names)
    compiled = _CACHE.get(cache_key)
    if compiled is None:
        compiled = _CACHE[cache_key] = _compile(statement, dialect, names)
    return compiled


def _compile(statement: Executable, dialect: Dialect, names: frozenset[str]) -> _Compiled:
    _check(statement, names)
    done = statement.compile(dialect=dialect,  # type: ignore[attr-defined]
                             column_keys=sorted(names))
    order = tuple(done.positiontup or ())
    binds = done.binds
    if any(bind.expanding or bind.literal_execute or bind.callable is not None
           for bind in binds.values()):
        raise ValueError("a hot statement's parameters must be plain values")
    return _Compiled(
        sql=done.string, names=order,
        processors=tuple(binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                         for name in order),
        fixed={name: bind.effective_value for name, bind in binds.items()
               if not bind.required and name not in names})


def _check(statement: Executable, names: frozenset[str]) -> None:
    for column in getattr(statement, "_returning", ()):
        if column.type.python_type not in (int, str):
            raise ValueError(f"a hot statement must return plain values, not {column}")
    if isinstance(statement, Insert | Update):
        given = names | {getattr(column, "key", column) for column in statement._values or {}}
        missing = [column.key for column in statement.table.columns  # type: ignore[attr-defined]
                   if (column.default if isinstance(statement, Insert) else column.onupdate)
                   is not None and column.key not in given]
        if missing:
            raise ValueError(f"a hot statement must set {missing}: the cursor has no defaults")
