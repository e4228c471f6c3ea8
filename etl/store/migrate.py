"""Alembic migrations, run from the code: ``numbers-etl db upgrade`` / ``db current``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from etl.errors import SchemaOutOfDate


def alembic_config() -> Config:
    location = Path(str(files("etl.migrations")))
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def check_schema(engine: Engine, *, create_if_new: bool = False) -> None:
    """Raise SchemaOutOfDate unless the database is at the code's head revision.

    With ``create_if_new`` an empty database (no tables at all) is migrated instead."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None and create_if_new:
        with engine.connect() as conn:
            empty = not engine.dialect.get_table_names(conn)
        if empty:
            upgrade(engine)
            return
    raise SchemaOutOfDate(
        f"the database is at migration {current or 'none (no numbers-etl tables)'} but this "
        f"version of numbers-etl needs {head}; run `numbers-etl db upgrade` first"
    )
