"""Alembic migrations, run from the code: ``numbers-etl db upgrade`` / ``db current``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Engine

from etl.errors import SchemaOutOfDate
from etl.store.engine import sqlite_path


def migration_lock_name(database: str) -> str:
    """The MySQL/MariaDB named lock that upgrades of ``database`` take turns on. Such a lock
    covers the whole server, so the name is the database's own (hashed: a name may be 64
    characters long, as may a database's), lest an upgrade wait for one of another
    database."""
    digest = hashlib.blake2b(database.encode(), digest_size=8).hexdigest()
    return f"numbers_etl_migrate_{digest}"


def alembic_config() -> Config:
    location = Path(str(files("etl.migrations")))
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("path_separator", "os")
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def known_revision(revision: str) -> bool:
    """Whether this version of numbers-etl has the migration ``revision``."""
    try:
        return _script().get_revision(revision) is not None
    except (CommandError, RevisionError):  # "Can't locate revision ..."
        return False


def missing_database(url: str, *, default: bool) -> SchemaOutOfDate | None:
    """The error for a SQLite file that does not exist, so that a command that needs the
    history says so instead of creating an empty file by connecting; None when the file
    exists, for another database, and for the ``default`` file, which the sync creates."""
    path = sqlite_path(url)
    if path is None or default or path.exists():
        return None
    return no_database(path)


def no_database(path: Path | None) -> SchemaOutOfDate:
    """The error for the SQLite file at ``path`` that is not there."""
    if path is None:
        return SchemaOutOfDate(
            "there is no database at that SQLite URL; check database_url, or create it with "
            "`numbers-etl db upgrade`"
        )
    path = path.absolute()
    if not path.parent.is_dir():
        return SchemaOutOfDate(
            f"there is no database at {path}, nor its directory {path.parent}; check "
            "database_url, or create the directory and then the database with "
            "`numbers-etl db upgrade`"
        )
    return SchemaOutOfDate(
        f"there is no database at {path}; check database_url, or create it with "
        "`numbers-etl db upgrade`"
    )


def newer_database(current: str) -> SchemaOutOfDate:
    """The error for a database at a revision this code does not know."""
    return SchemaOutOfDate(
        f"the database is at migration {current}, which this version of numbers-etl "
        f"(migrations up to {head_revision()}) does not know: a newer numbers-etl migrated "
        "it. Run that version, or install it and move the database back with alembic "
        "downgrade from its checkout"
    )


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    _migrate(engine, command.downgrade, revision)


def _migrate(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    """Run alembic's ``step`` to ``revision``; a revision that the database is at or is
    asked for, and that this code does not know, is a SchemaOutOfDate (exit 2), not a
    traceback."""
    if is_plain_revision(revision) and not known_revision(revision):
        raise _no_such(revision)
    current = current_revision(engine)
    if current is not None and not known_revision(current):
        raise newer_database(current)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        try:
            step(config, revision)
        except CommandError as exc:  # a relative target (+2, -1) out of range, say
            raise _no_such(revision, str(exc)) from None


def is_plain_revision(revision: str) -> bool:
    """A revision id (0002), not a name alembic resolves (head, base, +1, -1, 0001+1)."""
    return revision not in ("head", "heads", "base") and not any(c in revision for c in "+-@:")


def _no_such(revision: str, why: str | None = None) -> SchemaOutOfDate:
    return SchemaOutOfDate(
        f"there is no migration {revision!r}"
        + (f" ({why})" if why else "")
        + f": this version of numbers-etl has {', '.join(_revisions())} (head: {head_revision()})"
    )


def _revisions() -> list[str]:
    return [r.revision for r in reversed(list(_script().walk_revisions()))]


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
    if current is not None and not known_revision(current):
        raise newer_database(current)
    raise SchemaOutOfDate(
        f"the database is at migration {current or 'none (no numbers-etl tables)'} but this "
        f"version of numbers-etl needs {head}; run `numbers-etl db upgrade` first"
    )
