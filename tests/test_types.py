"""The column types' binding: the remembered UTCDateTime processing gives what the plain
processing gives, on every dialect, and still refuses what it refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Dialect
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.types import TypeDecorator

from etl.store.types import UTCDateTime

DIALECTS = {
    "sqlite": sqlite.pysqlite.dialect(),
    "postgresql": postgresql.psycopg.dialect(),
    "mysql": mysql.pymysql.dialect(),
}

# hypothesis takes naive bounds and attaches the time zones itself
moments = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]
    ),
)


def processors(dialect: Dialect) -> tuple[Any, Any]:
    """(the remembering processor, SQLAlchemy's plain one) of UTCDateTime on ``dialect``."""
    column_type = UTCDateTime()
    return (
        column_type.dialect_impl(dialect).bind_processor(dialect),
        TypeDecorator.bind_processor(column_type.dialect_impl(dialect), dialect),
    )


@pytest.mark.parametrize("name", DIALECTS)
@given(moments=st.lists(moments, min_size=1, max_size=20))
def test_remembered_binding_is_the_plain_binding(name: str, moments: list[datetime]) -> None:
    remembered, plain = processors(DIALECTS[name])
    for moment in moments * 2:  # the second time round, from what was remembered
        assert remembered(moment) == plain(moment)
        assert type(remembered(moment)) is type(plain(moment))
        assert remembered(moment.astimezone(UTC)) == plain(moment)


def test_sqlite_text_is_sqlalchemy_storage_format() -> None:
    remembered, _plain = processors(DIALECTS["sqlite"])
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert remembered(moment) == "2026-01-02 01:04:05.000000"
    assert remembered(None) is None


@pytest.mark.parametrize("name", DIALECTS)
def test_naive_datetimes_are_refused_every_time(name: str) -> None:
    remembered, _plain = processors(DIALECTS[name])
    for _ in range(2):
        with pytest.raises(ValueError, match="naive datetime"):
            remembered(datetime(2026, 1, 1))  # noqa: DTZ001 (the point)
