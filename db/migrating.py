"""Alembic, configured in code: the migrations ship inside the package and need no alembic.ini."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")


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

    Safe on every start, also from several processes at once on SQLite (the upgrade runs in one
    IMMEDIATE transaction). Creates a SQLite file's parent folder when missing. Returns the
    head revision id.
    """
    _ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), "head")
    return head_revision()


def _ensure_sqlite_folder(url: str) -> None:
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or parsed.query.get("mode") == "memory":
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
