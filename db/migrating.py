"""Alembic, configured in code: the migrations ship inside the package and need no alembic.ini."""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .engine import database_errors, make_engine
from .schema import Installation

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
#: Key of the PostgreSQL advisory lock that lets one `migrate` run at a time per database.
MIGRATION_LOCK_KEY = 0x6C61_6265_6C65_72  # "labeler"


def alembic_config(url: str) -> Config:
    """An Alembic `Config` for `url` pointing at the packaged migrations.

    Use it with `alembic.command`, e.g. ``command.revision(alembic_config(url), "add x",
    autogenerate=True)`` to draft a new migration against a database at head.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def migrate(url: str) -> str:
    """Bring the database at `url` to the newest schema; a no-op when it is already there.

    Safe on every start, also from several processes at once: on SQLite the upgrade holds an
    exclusive ``flock`` on the database file (SQLite's own locks are fcntl locks, which flock does
    not touch), so one process migrates and the others then find the file at head; on PostgreSQL (whose concurrent CREATE TABLEs would collide) it holds
    a session advisory lock (`MIGRATION_LOCK_KEY`) for the whole upgrade, so the others wait and
    then find the database at head. Creates a SQLite file's parent folder when missing. Returns
    the head revision id. Raises `db.engine.DatabaseUnavailable` (one line, password masked)
    when the database cannot be reached, opened or migrated.
    """
    with database_errors(url):
        _ensure_sqlite_folder(url)
        if make_url(url).get_backend_name() == "postgresql":
            _upgrade_locked(url)
        else:
            with _sqlite_file_lock(url):
                command.upgrade(alembic_config(url), "head")
    return head_revision()


def open_database(url: str, *, writable: bool = True, **engine_kwargs: Any) -> Engine:
    """The one way in: migrate the database at `url`, then return its engine (`make_engine`
    with `engine_kwargs`), with `writable` after checking that it can be written (a no-op
    update, rolled back). A read-only database at head opens with ``writable=False``.

    Raises `db.engine.DatabaseUnavailable`, a ValueError whose message is one line naming the
    database (password masked) and the problem: bad URL, unknown dialect or missing driver,
    server unreachable, file missing, read-only or not a database, migration impossible.
    """
    migrate(url)
    with database_errors(url):
        engine = make_engine(url, **engine_kwargs)
        try:
            with engine.connect() as connection:
                connection.execute(select(Installation.id))  # "file is not a database" shows on first read
                if writable:  # read-only files and roles pass a migration that has nothing to do
                    connection.execute(update(Installation).values(id=Installation.id))
                connection.rollback()
        except BaseException:
            engine.dispose()
            raise
    return engine


def _upgrade_locked(url: str) -> None:
    """Upgrade a PostgreSQL database while holding an advisory lock on the same connection."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            connection.commit()  # a session-level lock outlives the transaction; env.py begins its own
            try:
                config = alembic_config(url)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            finally:
                connection.rollback()
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                connection.commit()
    finally:
        engine.dispose()


@contextmanager
def _sqlite_file_lock(url: str):
    """An exclusive advisory lock on a SQLite database file (none for in-memory databases)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    path = Path(database).expanduser()
    with open(path, "rb" if path.exists() else "ab") as handle:  # a read-only file locks too; a missing one is created, as SQLite would
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_sqlite_folder(url: str) -> None:
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or parsed.query.get("mode") == "memory":
        return
    folder = Path(database).expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create its folder {folder} ({exc.strerror})") from None
