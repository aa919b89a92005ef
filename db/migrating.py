"""Alembic, configured in code: the migrations ship inside the package and need no alembic.ini."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .engine import make_engine

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

    Safe on every start, also from several processes at once: on SQLite the upgrade runs in one
    IMMEDIATE transaction; on PostgreSQL (whose concurrent CREATE TABLEs would collide) it holds
    a session advisory lock (`MIGRATION_LOCK_KEY`) for the whole upgrade, so the others wait and
    then find the database at head. Creates a SQLite file's parent folder when missing. Returns
    the head revision id.
    """
    _ensure_sqlite_folder(url)
    if make_url(url).get_backend_name() == "postgresql":
        _upgrade_locked(url)
    else:
        command.upgrade(alembic_config(url), "head")
    return head_revision()


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


def _ensure_sqlite_folder(url: str) -> None:
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or parsed.query.get("mode") == "memory":
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
