"""Many-row INSERT and UPDATE statements for the write path: rows as tuples, straight to the driver.

SQLAlchemy Core binds every row of an executemany through its compiled statement (a dict per row,
a type processor per value); at a hundred index rows per message that was most of the writer's
time. A bulk statement is the same INSERT or UPDATE written once per table and dialect:

* SQLite: one statement the driver prepares once and runs per row (sqlite3 ``executemany``);
* PostgreSQL: one statement whose parameters are one array per column, turned back into rows by
  ``unnest`` (one round trip per call, and a fixed text the server prepares once).

Values go through the columns' own SQLAlchemy bind processors, so the database stores what Core
would have stored (SQLite keeps datetimes as the same text). Errors surface as SQLAlchemy
exceptions, since the statements run through ``Connection.exec_driver_sql``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Double, Integer, LargeBinary, String, Table
from sqlalchemy.engine import Connection, Dialect

Processor = Callable[[Any], Any]


class BulkInsert:
    """``INSERT INTO table (columns) ... [conflict clause] [RETURNING ...]`` for many rows at once.

    ``conflict`` is an ``ON CONFLICT`` clause both dialects accept; ``returning`` needs PostgreSQL
    (sqlite3 cannot return rows from ``executemany``). On PostgreSQL the rows are inserted in the
    order given, which a caller that takes row locks relies on.
    """

    def __init__(self, table: Table, columns: Sequence[str] | None = None, *, conflict: str = "", returning: str = ""):
        self.table = table
        self.columns = tuple(columns) if columns is not None else tuple(table.c.keys())
        self.conflict = conflict
        self.returning = returning
        self._compiled: dict[str, tuple[str, _RowConverter]] = {}

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Insert ``rows`` (tuples in ``columns`` order); the returned rows, if any were asked for."""
        if not rows:
            return []
        sql, convert = self._for(conn.dialect)
        if conn.dialect.name == "postgresql":
            result = conn.exec_driver_sql(sql, _as_arrays(convert(rows)))
            return list(result) if self.returning else []
        if self.returning:
            raise NotImplementedError("RETURNING from a bulk insert needs PostgreSQL")
        conn.exec_driver_sql(sql, convert(rows))
        return []

    def _for(self, dialect: Dialect) -> tuple[str, _RowConverter]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            names = ", ".join(self.columns)
            if dialect.name == "postgresql":
                arrays = ", ".join(f"%b::{_array_type(self.table, c)}" for c in self.columns)
                source = f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS u({names}, n) ORDER BY n"
            else:
                source = f"VALUES ({', '.join('?' for _ in self.columns)})"
            sql = f"INSERT INTO {self.table.name} ({names}) {source}"
            sql += f" {self.conflict}" if self.conflict else ""
            sql += f" RETURNING {self.returning}" if self.returning else ""
            compiled = self._compiled[dialect.name] = (sql, _RowConverter(self.table, self.columns, dialect))
        return compiled


class BulkUpdate:
    """``UPDATE table SET columns WHERE keys`` for many rows; each row is (*set values, *key values).

    The keys of one call must be distinct (PostgreSQL would apply only one of two updates of a row).
    """

    def __init__(self, table: Table, columns: Sequence[str], keys: Sequence[str]):
        self.table = table
        self.columns = tuple(columns)
        self.keys = tuple(keys)
        self._compiled: dict[str, tuple[str, _RowConverter]] = {}

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Update one row per tuple; a (key) matching no row changes nothing."""
        if not rows:
            return
        sql, convert = self._for(conn.dialect)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(sql, _as_arrays(convert(rows)))
        else:
            conn.exec_driver_sql(sql, convert(rows))

    def _for(self, dialect: Dialect) -> tuple[str, _RowConverter]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            table, every = self.table.name, (*self.columns, *self.keys)
            if dialect.name == "postgresql":
                arrays = ", ".join(f"%b::{_array_type(self.table, c)}" for c in every)
                assign = ", ".join(f"{c} = u.{c}" for c in self.columns)
                match = " AND ".join(f"t.{c} = u.{c}" for c in self.keys)
                sql = f"UPDATE {table} AS t SET {assign} FROM unnest({arrays}) AS u({', '.join(every)}) WHERE {match}"
            else:
                assign = ", ".join(f"{c} = ?" for c in self.columns)
                sql = f"UPDATE {table} SET {assign} WHERE {' AND '.join(f'{c} = ?' for c in self.keys)}"
            compiled = self._compiled[dialect.name] = (sql, _RowConverter(self.table, every, dialect))
        return compiled


class KeyedRows:
    """The rows of ``table`` for many (type, id) keys, read or deleted in one statement per chunk.

    SQLite joins a VALUES list to the table (CROSS JOIN: the list drives, each key is an index
    lookup); PostgreSQL joins ``unnest`` of two arrays.
    """

    #: Keys per statement: two parameters each, well under SQLite's oldest limit (999).
    CHUNK = 400

    def __init__(self, table: Table, columns: Sequence[str] = ()):
        self.table = table
        self.columns = tuple(columns)
        self._processors: dict[str, list[tuple[int, Processor]]] = {}

    def select(self, conn: Connection, keys: Sequence[tuple[str, str]]) -> list[tuple[Any, ...]]:
        """(type, id, *columns) of the keys that have a row, values converted as Core would."""
        found: list[tuple[Any, ...]] = []
        picked = ", ".join(f"t.{name}" for name in ("type", "id", *self.columns))
        join = "CROSS JOIN" if conn.dialect.name == "sqlite" else "JOIN"  # SQLite: keep the join order
        processors = self._result_processors(conn.dialect)
        for listed, params in _key_lists(conn.dialect, keys):
            sql = f"SELECT {picked} FROM {listed} {join} {self.table.name} AS t ON {_MATCH}"
            rows = conn.exec_driver_sql(sql, params).all()
            found += [_processed(row, processors) for row in rows] if processors else [tuple(row) for row in rows]
        return found

    def delete(self, conn: Connection, keys: Sequence[tuple[str, str]]) -> None:
        table = self.table.name
        for listed, params in _key_lists(conn.dialect, keys):
            if conn.dialect.name == "postgresql":
                sql = f"DELETE FROM {table} AS t USING {listed} WHERE {_MATCH}"
            else:
                found = f"SELECT t.rowid FROM {listed} CROSS JOIN {table} AS t ON {_MATCH}"
                sql = f"DELETE FROM {table} WHERE rowid IN ({found})"
            conn.exec_driver_sql(sql, params)

    def _result_processors(self, dialect: Dialect) -> list[tuple[int, Processor]]:
        processors = self._processors.get(dialect.name)
        if processors is None:
            processors = []
            for position, name in enumerate(self.columns, start=2):
                processor = self.table.c[name].type.dialect_impl(dialect).result_processor(dialect, None)
                if processor is not None:
                    processors.append((position, processor))
            self._processors[dialect.name] = processors
        return processors


_MATCH = "t.type = k.column1 AND t.id = k.column2"


def _key_lists(dialect: Dialect, keys: Sequence[tuple[str, str]]) -> Iterator[tuple[str, Any]]:
    """``keys`` as relations ``k(column1, column2)`` of at most ``KeyedRows.CHUNK`` rows, and their parameters."""
    for start in range(0, len(keys), KeyedRows.CHUNK):
        chunk = keys[start : start + KeyedRows.CHUNK]
        if dialect.name == "postgresql":
            arrays = ([key[0] for key in chunk], [key[1] for key in chunk])
            yield "unnest(%b::text[], %b::text[]) AS k(column1, column2)", arrays
        else:
            yield f"(VALUES {', '.join('(?, ?)' for _ in chunk)}) AS k", tuple(v for key in chunk for v in key)


def _processed(row: Sequence[Any], processors: list[tuple[int, Processor]]) -> tuple[Any, ...]:
    values = list(row)
    for position, processor in processors:
        values[position] = processor(values[position])
    return tuple(values)


class _RowConverter:
    """Applies the columns' SQLAlchemy bind processors to rows (only where a column has one)."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect):
        self.processors: list[tuple[int, Processor]] = []
        for position, name in enumerate(columns):
            processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors.append((position, processor))

    def __call__(self, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
        if not self.processors:
            return rows
        # Equal values recur (a batch shares one timestamp): convert each distinct one once.
        memo: list[dict[Any, Any]] = [{} for _ in self.processors]
        converted = []
        for row in rows:
            values = list(row)
            for (position, processor), seen in zip(self.processors, memo):
                value = values[position]
                if value is not None:
                    try:
                        values[position] = seen[value]
                    except KeyError:
                        values[position] = seen[value] = processor(value)
                    except TypeError:  # unhashable: convert as it is
                        values[position] = processor(value)
            converted.append(tuple(values))
        return converted


def _as_arrays(rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """Rows (at least one) as one list per column: the parameters of an ``unnest``."""
    return tuple(map(list, zip(*rows)))


#: Column type -> the PostgreSQL array type its values are sent as, most specific first (a
#: BigInteger is an Integer); text, not varchar(n), so that a value too long still fails.
_ARRAY_TYPES = (
    (DateTime, "timestamp[]"),
    (Boolean, "boolean[]"),
    (BigInteger, "bigint[]"),
    (Integer, "integer[]"),
    (LargeBinary, "bytea[]"),
    (Double, "double precision[]"),
    (String, "text[]"),
)


def _array_type(table: Table, name: str) -> str:
    column_type = table.c[name].type
    for python_type, array_type in _ARRAY_TYPES:
        if isinstance(column_type, python_type):
            return array_type
    raise TypeError(f"{table.name}.{name}: no bulk array type for {column_type!r}")
