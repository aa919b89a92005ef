"""Engines and sessions. SQLite gets WAL, enforced foreign keys and a busy timeout on every
connection; any other SQLAlchemy URL is used as is. `database_errors` turns what opening a
database raises into one `DatabaseUnavailable` line with the password masked."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .jsoncodec import dumps

_BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")


def make_engine(
    url: str,
    *,
    busy_timeout_s: float = 5.0,
    sqlite_begin: str = "IMMEDIATE",
    foreign_keys: bool = True,
    **kwargs: Any,
) -> Engine:
    """Create an engine whose JSON columns accept numpy scalars and arrays.

    Parameters
    ----------
    url : str
        Any SQLAlchemy URL, e.g. ``sqlite:///var/labels.db`` or ``postgresql+psycopg://...``.
    busy_timeout_s : float
        SQLite only: seconds a connection waits for another writer before failing.
    sqlite_begin : str
        SQLite only: how transactions begin. IMMEDIATE (default) takes the write lock at the
        start, so read-then-write units of work queue behind each other (up to the busy
        timeout) instead of failing with "database is locked". Long reads (exports,
        statistics) should use ``engine.execution_options(sqlite_begin="DEFERRED")``, which
        shares the pool and neither blocks writers nor waits for them (WAL).
    foreign_keys : bool
        SQLite only: enforce foreign keys (the migrations turn this off while they run).
    **kwargs
        Passed to `sqlalchemy.create_engine`.
    """
    kwargs.setdefault("json_serializer", dumps)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, busy_timeout_s, sqlite_begin, foreign_keys)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def _configure_sqlite(engine: Engine, busy_timeout_s: float, begin: str, foreign_keys: bool) -> None:
    begin = begin.upper()
    if begin not in _BEGIN_MODES:
        raise ValueError(f"sqlite_begin must be one of {_BEGIN_MODES}, got {begin!r}")
    if busy_timeout_s < 0:
        raise ValueError(f"busy_timeout_s must be >= 0, got {busy_timeout_s}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = str(connection.get_execution_options().get("sqlite_begin", begin)).upper()
        if mode not in _BEGIN_MODES:
            raise ValueError(f"sqlite_begin must be one of {_BEGIN_MODES}, got {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")


class DatabaseUnavailable(ValueError):
    """The database cannot be opened, migrated or written. The message is one line naming the
    database (password masked) and the problem."""


def safe_url(url: str) -> str:
    """`url` with its password replaced by ``***``; a placeholder when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown not at all (it may hold a password)
        return "<not a SQLAlchemy URL>"


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Re-raise what SQLAlchemy, its drivers, Alembic or the file system raise inside the block
    as `DatabaseUnavailable` (without the chained traceback)."""
    from alembic.util.exc import CommandError

    try:
        yield
    except DatabaseUnavailable:
        raise
    except (sa_exc.SQLAlchemyError, CommandError, ImportError, OSError) as exc:
        raise DatabaseUnavailable(f"database {safe_url(url)}: {_reason(url, exc)}") from None


def _reason(url: str, exc: BaseException) -> str:
    from alembic.util.exc import CommandError

    if isinstance(exc, sa_exc.NoSuchModuleError):
        reason = f"unknown kind of database {make_url(url).drivername!r} (SQLAlchemy has no such dialect)"
    elif isinstance(exc, sa_exc.ArgumentError) and safe_url(url).startswith("<"):
        reason = "expected a URL like sqlite:///data/labeler.db or postgresql+psycopg://user:password@host/name"
    elif isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        reason = str(exc.orig) or type(exc.orig).__name__
        if "readonly" in reason or "read-only" in reason:
            reason += " (the database must be writable: it is migrated and written to)"
    elif isinstance(exc, ImportError):
        reason = f"its driver is not installed ({exc})"
    elif isinstance(exc, OSError):
        reason = f"{exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")
    elif isinstance(exc, CommandError):
        reason = f"cannot migrate: {exc}"
        if "Can't locate revision" in reason:
            reason += " (was it migrated by a newer version of this software?)"
    else:
        reason = str(exc) or type(exc).__name__
    # one line: drivers' messages span several
    reason = "; ".join(" ".join(line.split()) for line in reason.splitlines() if line.strip())
    password = _password(url)
    return reason.replace(password, "***") if password else reason


def _password(url: str) -> str | None:
    try:
        return make_url(url).password or None
    except Exception:  # noqa: BLE001
        return None
