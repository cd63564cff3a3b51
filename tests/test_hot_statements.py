"""Hot statements (service/db/hot.py): on SQLite the batch writer runs them on the driver's
cursor; what lands in the database must be exactly what SQLAlchemy would have written, and a
statement the cursor cannot run faithfully is refused when it is first compiled."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Connection, Engine, Table, bindparam, create_engine, insert
from sqlalchemy.exc import IntegrityError

from service.accounting import quotas, usage
from service.db import ApiKeyRow, Base
from service.db.hot import HotConnection, hot

NOW = datetime(2026, 12, 6, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def rows(engine: Engine, table: str) -> list[tuple]:
    with sqlite3.connect(engine.url.database or "") as raw:
        query = f"SELECT * FROM {table}"  # noqa: S608 (the tests' own table names)
        return sorted(raw.execute(query).fetchall(), key=repr)


def write_both_ways(engine: Engine, statement, parameters) -> None:  # type: ignore[no-untyped-def]
    """The same statement through SQLAlchemy, then through the cursor."""
    with engine.begin() as connection:
        connection.execute(statement, parameters)
    with engine.begin() as connection:
        HotConnection(connection).execute(statement, parameters)


def test_a_usage_record_is_stored_as_sqlalchemy_stores_it(engine: Engine) -> None:
    values = {"request_id": "req-1", "key_id": "key_1", "created_at": NOW, "day": NOW.date(),
              "door": "rest", "model": "gpt-image-2", "served_model": None, "provider": "openai",
              "n": 1, "size": "1024x1024", "quality": "high", "response_format": "b64_json",
              "user": None, "status": "OK", "http_status": 200, "images": 1, "bytes": 10,
              "upstream_ms": 1.5, "total_ms": 2.5}
    table = cast(Table, usage.UsageRecordRow.__table__)
    extra = {c.key: 0 for c in table.columns if c.key not in values and c.key != "id"
             and not c.nullable}
    write_both_ways(engine, usage.ADD_RECORD, {**values, **extra})
    first, second = rows(engine, "usage_records")
    assert first[1:] == second[1:]  # all but the id


def test_quota_statements_store_and_answer_as_sqlalchemy_does(engine: Engine) -> None:
    claim = quotas._claim_statements(quotas.INSERTS["sqlite"])[True]
    day = quotas.window_start(quotas.DAY, NOW)
    answers: dict[str, list[tuple]] = {}
    for owner, run in (("key_1", lambda c: c), ("key_2", HotConnection)):
        for amount in (3, 3):  # the second would pass the limit of 5: no row, nothing added
            with engine.begin() as connection:
                result = run(connection).execute(claim, {  # type: ignore[operator]
                    "owner": owner, "window": quotas.DAY, "window_start": day,
                    "amount": amount, "limit": 5})
                answers.setdefault(owner, []).append(tuple(result.first() or ()))
        with engine.begin() as connection:
            run(connection).execute(quotas.REMEMBER, {  # type: ignore[operator]
                "reservation": f"res_{owner}", "owner": owner, "images": 3,
                "expires_at": NOW, "windows": [["day", day.isoformat()]]})
    assert answers == {"key_1": [(3,), ()], "key_2": [(3,), ()]}
    by_sqlalchemy, by_cursor = rows(engine, "quota_counters")
    assert by_sqlalchemy[1:] == by_cursor[1:]
    by_sqlalchemy, by_cursor = rows(engine, "quota_reservations")
    assert by_sqlalchemy[2:] == by_cursor[2:]


def test_driver_errors_are_sqlalchemys(engine: Engine) -> None:
    statement = hot(insert(cast(Table, quotas.QuotaReservationRow.__table__)).values(
        id=bindparam("reservation"), key_id="k", images=1, windows=[], expires_at=NOW))
    with engine.begin() as connection:
        HotConnection(connection).execute(statement, {"reservation": "same"})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        HotConnection(connection).execute(statement, {"reservation": "same"})


def test_an_insert_that_leaves_a_python_default_unset_is_refused(engine: Engine) -> None:
    statement = hot(insert(cast(Table, ApiKeyRow.__table__)))  # created_at=utcnow, admin=False
    with engine.begin() as connection, pytest.raises(ValueError, match="created_at"):
        HotConnection(cast(Connection, connection)).execute(statement, {
            "id": "key_1", "name": "k", "secret_hash": "x"})
